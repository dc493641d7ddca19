"""Trains several configurations side by side on one machine and evaluates each on PublicTest.

A small network leaves most of an H100 idle, so one GPU lease trains a whole sweep at once. Each lane
of the lanes file is `NAME CONFIG [--set key=value]...`; every lane runs

    fertrain train --config CONFIG --data DATA --run-dir RUNS/NAME --set ...
    fertrain evaluate RUNS/NAME --split val --tta none|flip|ten_crop --json

as its own process (with `--mem-fraction` of the GPU's memory under JAX), and a packer writes the
small files of every run (history, metrics, config, evaluations, logs and models up to
`--max-model-mb`) to OUT/sweep.tar.gz every `--pack-every` seconds, so a lease cut off at its limit
still returns what was done. Lanes still running at `--deadline` seconds are stopped.

    KERAS_BACKEND=jax python benchmarks/accuracy_sweep.py benchmarks/sweeps/NAME.txt \\
        --data prepared/fer2013 --runs /tmp/sweep --out "$OUT" --deadline 540
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

TTA_MODES = ("none", "flip", "ten_crop")
PACKED_SUFFIXES = (".csv", ".json", ".yaml", ".log")


def read_lanes(path: Path) -> list[tuple[str, list[str]]]:
    lanes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lanes.append((words[0], words[1:]))
    return lanes


def lane_script(name: str, arguments: list[str], data: str, runs: Path, extra: list[str]) -> list[list[str]]:
    fertrain = [sys.executable, "-m", "fertrain"]
    config, overrides = arguments[0], [*arguments[1:], *extra]
    run_dir = runs / name
    commands = [
        [*fertrain, "train", "--config", config, "--data", data, "--run-dir", str(run_dir), *overrides]
    ]
    for tta in TTA_MODES:
        out = run_dir / f"publictest-{tta}.json"
        commands.append(
            [*fertrain, "evaluate", str(run_dir), "--split", "val", "--tta", tta, "--json", "--out", str(out)]
        )
    return commands


def run_lane(name: str, commands: list[list[str]], runs: Path, env: dict[str, str], deadline: float) -> None:
    log_path = runs / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        for command in commands:
            start = time.time()
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            while process.poll() is None:
                if time.time() > deadline:
                    process.terminate()
                    process.wait()
                    log.write("stopped at the deadline\n")
                    return
                time.sleep(1)
            log.write(f"exit {process.returncode} after {time.time() - start:.1f} s\n")
            log.flush()
            if process.returncode != 0:
                return


def pack(runs: Path, out: Path, max_model_bytes: int) -> None:
    temporary = out / ".sweep.tar.gz.tmp"
    with tarfile.open(temporary, "w:gz") as archive:
        for path in sorted(runs.rglob("*")):
            if not path.is_file() or "backup" in path.parts or "tensorboard" in path.parts:
                continue
            small_model = path.suffix == ".keras" and path.stat().st_size <= max_model_bytes
            if (path.suffix in PACKED_SUFFIXES or small_model) and not path.name.startswith("."):
                archive.add(path, arcname=str(path.relative_to(runs)))
    os.replace(temporary, out / "sweep.tar.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lanes", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds from start")
    parser.add_argument("--mem-fraction", default="0.1")
    parser.add_argument("--pack-every", type=float, default=20.0)
    parser.add_argument("--max-model-mb", type=float, default=4.0)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="added to every lane")
    args = parser.parse_args()

    start = time.time()
    deadline = start + args.deadline
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": args.mem_fraction, "PYTHONUNBUFFERED": "1"}
    lanes = read_lanes(args.lanes)
    extra = [word for value in args.extra for word in ("--set", value)]
    threads = [
        threading.Thread(
            target=run_lane,
            args=(name, lane_script(name, words, args.data, args.runs, extra), args.runs, env, deadline),
        )
        for name, words in lanes
    ]
    for thread in threads:
        thread.start()
    max_model_bytes = int(args.max_model_mb * 2**20)
    while any(thread.is_alive() for thread in threads):
        time.sleep(args.pack_every)
        pack(args.runs, args.out, max_model_bytes)
        print(f"{time.time() - start:.0f} s: {sum(t.is_alive() for t in threads)} lanes running", flush=True)
    pack(args.runs, args.out, max_model_bytes)
    for name, _ in lanes:
        scores = {}
        for tta in TTA_MODES:
            result = args.runs / name / f"publictest-{tta}.json"
            if result.is_file():
                scores[tta] = round(json.loads(result.read_text())["accuracy"], 4)
        metrics_path = args.runs / name / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        keys = ("best_epoch", "best_val_accuracy", "epochs_run", "wall_time_s", "train_images_per_s")
        print(json.dumps({"lane": name, **{k: metrics.get(k) for k in keys}, **scores}), flush=True)


if __name__ == "__main__":
    main()
