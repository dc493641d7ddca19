"""Markdown rows for benchmarks/accuracy.md from finished runs and their evaluations.

Each run directory needs metrics.json and the evaluations written by

    fertrain evaluate RUN --split val --tta T --json --out RUN/val-T.json              # chosen epoch
    fertrain evaluate RUN/last.keras --data DATA --split val --tta T --json --out RUN/val-last-T.json

for T in none, flip, ten_crop. On FER+ data the figure is the strict-majority accuracy (`accuracy`).

    python benchmarks/accuracy_rows.py runs/ferplus-ce-e36 runs/ferplus-probability-e36 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TTAS = ("none", "flip", "ten_crop")


def _figures(run: Path, prefix: str) -> str:
    cells = []
    for tta in TTAS:
        path = run / f"{prefix}{tta}.json"
        cells.append(f"{100 * json.loads(path.read_text())['accuracy']:.2f}" if path.is_file() else "—")
    return " / ".join(cells)


def row(run: Path) -> str:
    metrics = json.loads((run / "metrics.json").read_text())
    return (
        f"| `{run.name}` | {metrics.get('targets', 'labels')} | {metrics['epochs_run']} "
        f"| {metrics['wall_time_s']:,.0f} s | {_figures(run, 'val-')} (epoch {metrics['best_epoch']}) "
        f"| {_figures(run, 'val-last-')} |"
    )


HEADER = (
    "| run | targets | epochs | wall time | chosen epoch: none / flip / ten-crop "
    "| last epoch: none / flip / ten-crop |\n|---|---|---:|---:|---|---|"
)

if __name__ == "__main__":
    print(HEADER)
    for argument in sys.argv[1:]:
        print(row(Path(argument)))
