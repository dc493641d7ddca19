"""One run directory, one writer: `fertrain train` holds a lock that a second writer cannot take, and
that a killed holder never leaves behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_main import run_cli

from fertrain.config import load_config
from fertrain.errors import ConfigError
from fertrain.training import train
from fertrain.training.callbacks import AtomicBackupAndRestore
from fertrain.training.run_lock import LOCK_FILE, RunLock

REPO = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys, time; from fertrain.training.run_lock import RunLock; "
    "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
)


def hold_in_another_process(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_directory(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(ConfigError) as refused:
            RunLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"process {holder.pid} on {socket.gethostname()} (since " in message and "\n" not in message
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # the kernel released the killed holder's lock
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] != holder.pid
    lock.release()
    RunLock(tmp_path).acquire().release()


class Killed(Exception):
    """Stands for SIGKILL in-process."""


def test_resume_is_refused_while_the_run_trains_and_works_once_it_stopped(
    tmp_path, prepared_sample, monkeypatch, capsys
):
    config = load_config(
        REPO / "configs" / "quickstart.yaml",
        [
            "model.width_multiplier=0.25",
            "model.entry_widths=[16, 32]",
            "train.early_stopping_patience=0",
            "train.epochs=2",
            f"data.dir={prepared_sample}",
        ],
    )
    save_backup = AtomicBackupAndRestore._save_model

    def killed_after_epoch_1(self):
        if self._current_epoch == 2:
            raise Killed
        save_backup(self)

    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", killed_after_epoch_1)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(config, run_dir=run)
    monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", save_backup)
    history = (run / "history.csv").read_text()

    holder = hold_in_another_process(run)
    try:
        code, _, err = run_cli(["train", "--resume", run], capsys, monkeypatch)
        assert code == 2 and f"process {holder.pid} on" in err and "is training in this run directory" in err
        assert (run / "history.csv").read_text() == history  # nothing written by the refused writer
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    resumed = train(resume=run)
    assert resumed.resumed_from_epoch == 1 and resumed.metrics["epochs_run"] == 2
