"""Faults on the output side: a full disk, a path under a file, no permission, a read-only file system.

Every command answers in one line naming the path and the cause, exits 5, leaves no half-written
file behind and damages nothing already written. A real full or read-only file system is a small
tmpfs where this runs as root with CAP_SYS_ADMIN; elsewhere those tests are skipped and the failing
writer is patched instead.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_main import run_cli
from PIL import Image
from run_dirs import tiny_run

import fertrain.data.prepare
from fertrain.errors import FileSystemError
from fertrain.fileio import write_atomic, writing
from fertrain.training import read_history

REPO = Path(__file__).resolve().parents[1]
# The tiny mini-Xception of test_training.py: an epoch of the bundled sample in about a second.
TRAIN = [
    "train",
    "--config",
    REPO / "configs" / "quickstart.yaml",
    *("--set", "model.width_multiplier=0.25"),
    *("--set", "model.entry_widths=[16, 32]"),
    *("--set", "train.epochs=3"),
]
CAUSES = {
    errno.ENOSPC: "no space left on the device; free space",
    errno.EDQUOT: "disk quota exceeded; free space",
    errno.EACCES: "permission denied; fix the permissions or choose another path",
    errno.EROFS: "read-only file system; choose another path",
}


def assert_file_system_error(code: int, err: str, *fragments: str) -> None:
    assert code == 5, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def hidden_files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob(".*"))


@pytest.fixture
def small_filesystem(tmp_path):
    """mount(options) -> a folder that is a fresh tmpfs mounted with `options`, unmounted afterwards."""
    mounted = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
        if shutil.which("mount") is None or subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def under_a_file(tmp_path) -> Path:
    """An existing plain file: every output path below it is impossible."""
    blocker = tmp_path / "X"
    blocker.write_text("not a folder\n")
    return blocker


@pytest.fixture
def good_output(tmp_path, prepared_sample):
    """An earlier prepare's output, and a snapshot of its bytes."""
    out = tmp_path / "prepared"
    shutil.copytree(prepared_sample, out)
    return out, {path.name: path.read_bytes() for path in out.iterdir()}


def test_prepare_under_a_file(under_a_file, sample_csv, capsys, monkeypatch):
    code, _, err = run_cli(["prepare", sample_csv, "--out", under_a_file / "data"], capsys, monkeypatch)
    assert_file_system_error(code, err, f"{under_a_file}: exists and is not a folder; choose another path")
    assert under_a_file.read_text() == "not a folder\n"
    assert [path.name for path in under_a_file.parent.iterdir()] == ["X"]


@pytest.mark.parametrize("code", list(CAUSES), ids=errno.errorcode.get)
def test_prepare_failing_writes_keep_the_earlier_output(good_output, sample_csv, capsys, monkeypatch, code):
    def failing_savez(path, **arrays):
        Path(path).write_bytes(b"PK\x03\x04 half an archive")
        raise OSError(code, os.strerror(code))

    out, snapshot = good_output
    monkeypatch.setattr(fertrain.data.prepare.np, "savez", failing_savez)
    status, _, err = run_cli(["prepare", sample_csv, "--out", out], capsys, monkeypatch)
    assert_file_system_error(status, err, f"{out}: {CAUSES[code]}")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == snapshot
    assert hidden_files(out.parent) == []


@pytest.mark.parametrize(
    ("options", "cause"),
    [("size=600k", CAUSES[errno.ENOSPC]), ("ro", CAUSES[errno.EROFS])],
    ids=["full", "read-only"],
)
def test_prepare_onto_a_real_full_or_read_only_filesystem(
    small_filesystem, sample_csv, capsys, monkeypatch, options, cause
):
    mount = small_filesystem(options)
    code, _, err = run_cli(["prepare", sample_csv, "--out", mount / "data"], capsys, monkeypatch)
    assert_file_system_error(code, err, f"{mount / 'data'}: {cause}")
    assert list(mount.iterdir()) == []


def test_prepare_into_a_folder_without_write_permission(tmp_path, sample_csv, capsys, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root writes whatever the file modes say; the patched EACCES test covers this case")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli(["prepare", sample_csv, "--out", locked / "data"], capsys, monkeypatch)
    assert_file_system_error(code, err, f"{locked / 'data'}: {CAUSES[errno.EACCES]}")
    assert list(locked.iterdir()) == []


def test_train_run_dir_under_a_file(under_a_file, prepared_sample, capsys, monkeypatch):
    args = [*TRAIN, "--data", prepared_sample, "--run-dir", under_a_file / "run"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert_file_system_error(code, err, f"{under_a_file / 'run'}: a part of the path is a file, not a folder")
    assert "--resume" not in err  # nothing was written that a resume could continue


def assert_finishes_on_resume(run_dir: Path, capsys, monkeypatch) -> None:
    """What a user does after freeing space: the resumed run ends with every epoch exactly once."""
    code, _, err = run_cli(["train", "--resume", run_dir], capsys, monkeypatch)
    assert code == 0, err
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == [1, 2, 3]
    for name in ("model.keras", "last.keras"):
        keras.saving.load_model(run_dir / name, safe_mode=True)
    assert hidden_files(run_dir) == []


@pytest.mark.slow
def test_train_disk_full_while_saving_last_keras_then_resume(tmp_path, prepared_sample, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    save = keras.Model.save
    saves_of_last = []

    def full_on_second_epoch(model, filepath, *args, **kwargs):
        if Path(filepath).name == ".last.tmp.keras":
            saves_of_last.append(filepath)
            if len(saves_of_last) == 2:
                Path(filepath).write_bytes(b"PK\x03\x04 half a model")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(model, filepath, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(keras.Model, "save", full_on_second_epoch)
        code, _, err = run_cli([*TRAIN, "--data", prepared_sample, "--run-dir", run_dir], capsys, monkeypatch)
    assert_file_system_error(
        code,
        err,
        f"{run_dir / 'last.keras'}: no space left on the device; "
        f"free space, then continue with: fertrain train --resume {run_dir}",
    )
    assert hidden_files(run_dir) == []
    for name in ("model.keras", "last.keras"):  # epoch 1's, intact
        keras.saving.load_model(run_dir / name, safe_mode=True)
    assert_finishes_on_resume(run_dir, capsys, monkeypatch)


@pytest.mark.slow
def test_train_on_a_real_full_filesystem_then_resume(small_filesystem, prepared_sample, capsys, monkeypatch):
    # 300 KB hold the config, the models and TensorBoard's logs, but not epoch 1's backup as well.
    mount = small_filesystem("size=300k")
    run_dir = mount / "run"
    code, _, err = run_cli([*TRAIN, "--data", prepared_sample, "--run-dir", run_dir], capsys, monkeypatch)
    assert_file_system_error(
        code,
        err,
        f"no space left on the device; free space, then continue with: fertrain train --resume {run_dir}",
    )
    assert hidden_files(run_dir) == []
    subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
    assert_finishes_on_resume(run_dir, capsys, monkeypatch)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared_sample):
    return tiny_run(tmp_path_factory.getbasetemp(), prepared_sample)


# Commands reading a run and writing elsewhere: (run, data, photo, blocked output) -> arguments.
RUN_OUTPUTS = {
    "evaluate": lambda run, data, photo, out: ["evaluate", run, "--data", data, "--out", out / "e.json"],
    "export": lambda run, data, photo, out: [
        "export",
        run,
        "--format",
        "onnx",
        "--data",
        data,
        "--out",
        out / "m.onnx",
    ],
    "predict": lambda run, data, photo, out: ["predict", run, photo, "--annotate", out / "a"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RUN_OUTPUTS))
def test_run_outputs_under_a_file(
    run_dir, prepared_sample, under_a_file, tmp_path, capsys, monkeypatch, command
):
    if command == "export":
        pytest.importorskip("tf2onnx")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((48, 48), dtype=np.uint8)).save(photo)
    args = RUN_OUTPUTS[command](run_dir, prepared_sample, photo, under_a_file)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert_file_system_error(code, err, f"error: {under_a_file}", "; choose another path")
    assert under_a_file.read_text() == "not a folder\n"


def test_write_atomic_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_atomic(target, "old\n")

    def full_replace(source, destination):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), source, destination)

    monkeypatch.setattr(os, "replace", full_replace)
    with pytest.raises(OSError) as raised:
        write_atomic(target, "new\n")
    assert (raised.value.errno, raised.value.filename, raised.value.filename2) == (
        errno.ENOSPC,
        str(target),
        None,
    )
    assert target.read_text() == "old\n" and [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_hdf5_write_failures_become_os_errors_naming_the_file(tmp_path):
    target = tmp_path / "backup" / "epoch-00001.weights.h5"
    message = (  # h5py's own words on a full disk, line break included
        "Can't write data (file write failed: time = Thu Nov 26 18:49:01 2026\n, "
        "errno = 28, error message = 'No space left on device')"
    )
    with pytest.raises(OSError) as raised, writing(target):
        raise RuntimeError(message)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    with pytest.raises(RuntimeError, match="unrelated"), writing(target):
        raise RuntimeError("unrelated")


def test_unexpected_errors_are_one_line_naming_the_traceback_file(tmp_path, sample_csv, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug\nover two lines")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(fertrain.data.prepare, "prepare", broken)
    code, _, err = run_cli(["prepare", sample_csv, "--out", tmp_path / "data"], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "unexpected ValueError: a bug over two lines (full traceback in " in err
    (saved,) = tmp_path.glob("fertrain-traceback-*.txt")
    assert str(saved) in err
    assert "Traceback" in saved.read_text() and "in broken" in saved.read_text()


def test_messages_name_the_run_when_the_writer_names_no_file():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    resume = "fertrain train --resume runs/a"
    assert str(FileSystemError.from_os_error(full, where="runs/a", then=resume)) == (
        f"runs/a: no space left on the device; free space, then continue with: {resume}"
    )
    unlisted = OSError(errno.EIO, os.strerror(errno.EIO), "runs/a/history.csv")
    assert str(FileSystemError.from_os_error(unlisted)) == "runs/a/history.csv: Input/output error"
    assert str(FileSystemError.from_os_error(unlisted, then=resume)).endswith(
        f"Input/output error; fix that, then continue with: {resume}"
    )
