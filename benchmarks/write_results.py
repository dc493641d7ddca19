"""Runs `fertrain benchmark --compare notebook` for each config and the hand-written PyTorch loop,
and writes the measured table, the machine and the commands into benchmarks/results.md.

Only the block between the two `bench:` markers is replaced; the analysis around it is kept.

    .venv/bin/python benchmarks/write_results.py            # what `make bench` runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from fertrain.benchmark import FER2013_TRAIN_IMAGES

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:begin (written by benchmarks/write_results.py) -->", "<!-- bench:end -->"
# (config, batch size, steps per window, windows, predict images): on 2 CPU cores xception trains
# ~70 images/s and predicts ~300, so its windows are kept to a few seconds.
RUNS = [
    ("configs/mini_xception.yaml", 128, 20, 3, 4096),
    ("configs/mini_xception.yaml", 64, 30, 3, 4096),
    ("configs/xception.yaml", 64, 3, 3, 512),
]
BIN = Path(sys.executable).parent
TORCH_COMMAND = [str(BIN / "python"), "benchmarks/torch_reference.py", "--batch-size", "128", "--steps", "30",
                 "--repeats", "3"]  # fmt: skip


def fertrain_command(
    config: str, batch_size: int, steps: int, repeats: int, predict_images: int
) -> list[str]:
    return [str(BIN / "fertrain"), "benchmark", "--config", config, "--batch-size", str(batch_size),
            "--steps", str(steps), "--repeats", str(repeats), "--predict-images", str(predict_images),
            "--compare", "notebook", "--json"]  # fmt: skip


def run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=HERE.parent)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
        flags = re.search(r"Flags:\s*(.+)", lscpu).group(1).split()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        model, flags = platform.processor() or platform.machine(), []
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(simd) or 'no AVX2'}"


def command_line(command: list[str]) -> str:
    """The command as typed in the repository root."""
    program = Path(command[0])
    if program.is_relative_to(HERE.parent):
        program = program.relative_to(HERE.parent)
    return " ".join([str(program), *command[1:]])


def row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def epoch(images_per_s: float) -> str:
    return f"{FER2013_TRAIN_IMAGES / images_per_s:,.0f} s"


def table(results: list[dict], torch_result: dict) -> list[str]:
    lines = [
        row(
            "config",
            "way",
            "batch",
            "train img/s (best)",
            "median",
            "train CPU ms/img",
            "predict img/s",
            "FER2013 epoch",
        ),  # fmt: skip
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        name = result["config_name"]
        for way_name in ("fertrain", "notebook"):
            way = result[way_name]
            lines.append(
                row(
                    name,
                    way_name,
                    way["batch_size"],
                    f"{way['train_images_per_s']:,.1f}",
                    f"{way['train_images_per_s_median']:,.1f}",
                    f"{way['train_cpu_ms_per_image']:.2f}",
                    f"{way['predict_images_per_s']:,.1f}",
                    epoch(way["train_images_per_s"]),
                )  # fmt: skip
            )
        lines.append(
            row(
                name,
                "**fertrain / notebook**",
                "",
                f"**{result['train_speedup']:.2f}x**",
                "",
                "",
                f"**{result['predict_speedup']:.2f}x**",
                "",
            )  # fmt: skip
        )
    torch_way = f"hand-written PyTorch loop ({torch_result['threads']} threads, channels-last)"
    lines.append(
        row(
            "mini_xception",
            torch_way,
            torch_result["batch_size"],
            f"{torch_result['train_images_per_s']:,.1f}",
            f"{torch_result['train_images_per_s_median']:,.1f}",
            "",
            f"{torch_result['predict_images_per_s']:,.1f}",
            epoch(torch_result["train_images_per_s"]),
        )  # fmt: skip
    )
    return lines


def block(results: list[dict], torch_result: dict, commands: list[list[str]]) -> str:
    versions = results[0]["versions"]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        f"Measured {stamp} on: {machine()}; Keras on {results[0]['backend']}; "
        f"Python {versions['python']}, TensorFlow {versions.get('tensorflow')}, Keras {versions['keras']}, "
        f"PyTorch {torch_result['torch']}, fertrain {versions['fertrain']}.",
        "",
        *table(results, torch_result),
        "",
        "Peak RSS of fertrain's own measurements: "
        + ", ".join(f"{r['config_name']} {r['peak_rss_mb']:,.0f} MiB" for r in results)
        + ". Training GFLOP/s (3 x 2 x MACs per image): "
        + ", ".join(f"{r['config_name']} {r['train_tflops'] * 1000:,.1f}" for r in results)
        + ".",
        "",
        "Commands:",
        "",
        "```",
        *(command_line(c) for c in commands),
        "```",
        END,
    ]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    old = path.read_text(encoding="utf-8") if path.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in old or END not in old:
        old = f"{old.rstrip()}\n\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(head + text + tail, encoding="utf-8")
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results.md"))
    args = parser.parse_args()
    commands = [fertrain_command(*run) for run in RUNS]
    results = []
    for command in commands:
        print(command_line(command), flush=True)
        results.append(run_json(command))
    print(command_line(TORCH_COMMAND), flush=True)
    torch_result = run_json(TORCH_COMMAND)
    write(Path(args.out), block(results, torch_result, [*commands, TORCH_COMMAND]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
