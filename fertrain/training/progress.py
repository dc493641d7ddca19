"""Rendering training progress for the CLI: a live bar on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# Metrics shown, in this order, with their short labels.
SHOWN = (
    ("loss", "loss"),
    ("accuracy", "acc"),
    ("val_loss", "val_loss"),
    ("val_accuracy", "val_acc"),
    ("learning_rate", "lr"),
)


def format_metrics(logs: dict[str, float]) -> str:
    parts = []
    for key, label in SHOWN:
        if key in logs:
            value = logs[key]
            parts.append(f"{label} {value:.2e}" if key == "learning_rate" else f"{label} {value:.4f}")
    return "  ".join(parts)


def format_times(time_s: dict[str, float]) -> str:
    """metrics.json's `time_s`, e.g. `startup 4s, compile 87s, train 100s, ...`."""
    return ", ".join(
        f"{part} {seconds:.0f}s" if seconds >= 10 else f"{part} {seconds:.1f}s"
        for part, seconds in time_s.items()
    )


class EpochLines:
    """Exactly one line per finished epoch: for logs and CI, where a live bar would be noise."""

    wants_batches = False

    def __init__(self, console: Console):
        self.console = console
        self._epoch_start = 0.0

    def training_started(self, run_dir: Path | None, plan: dict[str, Any]) -> None:
        resumed = f", resuming after epoch {plan['resumed_from_epoch']}" if plan["resumed_from_epoch"] else ""
        where = (
            f"into {run_dir}"
            if run_dir is not None
            else f"as worker {plan['worker']} (the chief writes the run)"
        )
        self.console.print(
            f"training {plan['name']} {where}{resumed}: {plan['train_images']:,} train / "
            f"{plan['val_images']:,} val images, {plan['epochs']} epochs of {plan['steps_per_epoch']} steps",
            highlight=False,
            soft_wrap=True,
        )
        self.console.print(
            f"backend {plan['backend']} on {', '.join(plan['devices'])}; "
            f"mixed precision {plan['mixed_precision']}, "
            f"XLA {'on' if plan['jit_compile'] else 'off'}, distribution {plan['distribution']}"
            + (f" ({plan['workers']} workers)" if plan["workers"] > 1 else ""),
            highlight=False,
            soft_wrap=True,
        )
        if plan.get("init_from"):
            self.console.print(plan["init_from"], highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        self._epochs = epochs
        self._epoch_start = time.perf_counter()

    def batch_finished(self, step: int, logs: dict[str, float]) -> None:
        pass

    def epoch_finished(self, epoch: int, logs: dict[str, float]) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self.console.print(
            f"epoch {epoch}/{self._epochs}  {format_metrics(logs)}  {seconds:.1f}s",
            highlight=False,
            soft_wrap=True,
        )


class EpochProgressBar(EpochLines):
    """A live bar per epoch with running loss/accuracy and ETA, replaced by the epoch's line at its end."""

    wants_batches = True

    def __init__(self, console: Console):
        super().__init__(console)
        self._bar: Progress | None = None
        self._task = None

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        super().epoch_started(epoch, epochs, steps)
        self._bar = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
            transient=True,
        )
        self._task = self._bar.add_task("train", total=steps, metrics="")
        self._bar.start()

    def batch_finished(self, step: int, logs: dict[str, float]) -> None:
        self._bar.update(self._task, completed=step, metrics=format_metrics(logs))

    def epoch_finished(self, epoch: int, logs: dict[str, float]) -> None:
        self.close()
        super().epoch_finished(epoch, logs)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def training_reporter(console: Console) -> EpochLines:
    return EpochProgressBar(console) if console.is_terminal else EpochLines(console)
