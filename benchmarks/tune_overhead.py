"""Seconds per `fertrain tune` trial spent outside the trial's training: study bookkeeping, database
round trips, freeing the trial's model, and the gap to the next trial. Tiny one-epoch trials on the
bundled sample, so that the bookkeeping is not lost in the training time.

    python benchmarks/tune_overhead.py --trials 8
    python benchmarks/tune_overhead.py --trials 8 --storage postgresql://user:password@localhost/db

Per storage: (end of the last trial - start of the first - the trials' seconds in
`fertrain.training.train`) / trials, and the largest single trial's (duration - training).
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

import optuna

from fertrain.data.prepare import prepare
from fertrain.tuning import tune
from fertrain.tuning.study import shown_url

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "model.width_multiplier=0.25",
    "model.entry_widths=[16, 32]",
    "train.early_stopping_patience=0",
    "train.epochs=1",
)


def overhead(
    storage: str | None, trials: int, work: Path, data: Path, space: Path
) -> tuple[str, float, float]:
    name = f"overhead-{uuid.uuid4().hex[:8]}"
    result = tune(
        REPO / "configs" / "quickstart.yaml",
        space,
        overrides=TINY,
        study=name,
        trials=trials,
        storage=storage,
        data_dir=data,
        out=work / name,
        pruner="none",
        seed=0,
    )
    done = optuna.load_study(study_name=name, storage=storage or f"sqlite:///{work / name / 'study.db'}")
    finished = done.get_trials()
    span = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds()
    training = [t.user_attrs["train_seconds"] for t in finished]
    worst = max(t.duration.total_seconds() - t.user_attrs["train_seconds"] for t in finished)
    return result.storage, (span - sum(training)) / len(finished), worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--storage", action="append", default=[], help="database URL (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        data = work / "sample"
        prepare(REPO / "data" / "sample" / "fer2013_sample.csv.gz", data)
        space = work / "space.yaml"
        space.write_text("train.optimizer.learning_rate: {float: [0.001, 0.01], log: true}\n")
        print("| storage | trials | outside training, s per trial | largest in one trial, s |")
        print("|---|---:|---:|---:|")
        for storage in [None, *args.storage]:
            shown, mean, worst = overhead(storage, args.trials, work, data, space)
            kind = "SQLite (default)" if storage is None else shown_url(storage).split(":", 1)[0]
            print(f"| {kind} | {args.trials} | {mean:.2f} | {worst:.2f} |")


if __name__ == "__main__":
    main()
