"""Rich tables for the terminal output of evaluate, predict and export (built here, printed by the CLI)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from fertrain.metrics import PER_CLASS_COLUMNS, SUMMARY_METRICS


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['split']} split: {summary['num_images']} images", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("models", "\n".join(summary["models"]))
    table.add_row("TTA / normalize", f"{summary['tta']} / {summary['normalize']}")
    for key, label in SUMMARY_METRICS:
        table.add_row(label, f"{summary[key]:.4f}")
    ferplus = summary.get("ferplus")
    if ferplus is not None:
        table.add_row(
            "FER+ majority accuracy",
            f"{ferplus['majority_accuracy']:.4f} ({ferplus['majority_faces']} faces, the figures above)",
        )
        table.add_row(
            "FER+ argmax accuracy", f"{ferplus['argmax_accuracy']:.4f} ({ferplus['argmax_faces']} faces)"
        )
    return table


def per_class_table(summary: dict[str, Any]) -> Table:
    table = Table(title="per class")
    for column in PER_CLASS_COLUMNS:
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in summary["per_class"]:
        table.add_row(
            row["class"],
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    return table


def confusion_table(summary: dict[str, Any]) -> Table:
    """Counts, each followed by its share of the true class."""
    names = summary["class_names"]
    table = Table(title="confusion matrix (rows true, columns predicted): count share")
    table.add_column("true \\ predicted", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    for name, counts, shares in zip(
        names, summary["confusion_matrix"], summary["confusion_matrix_normalized"], strict=True
    ):
        cells = [f"{count} [dim]{share:.0%}[/]" for count, share in zip(counts, shares, strict=True)]
        table.add_row(name, *cells)
    return table


def evaluation_tables(summary: dict[str, Any]) -> list[Table]:
    return [summary_table(summary), per_class_table(summary), confusion_table(summary)]


def calibration_table(result) -> Table:
    """A `fertrain.calibration.Calibration`: the temperature, then accuracy, ECE and NLL before and after."""
    table = Table(title=f"temperature {result.temperature:.4f} ({result.num_images} {result.split} images)")
    for column in ("metric", "before", "after"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, label in (("accuracy", "accuracy"), ("ece", "ECE (15 bins)"), ("nll", "NLL")):
        table.add_row(label, f"{result.before[key]:.4f}", f"{result.after[key]:.4f}")
    return table


def predictions_table(results, title: str) -> Table:
    """One row per classified face (or whole image) of `fertrain.predict.ImagePrediction`s."""
    table = Table(title=title)
    for column in ("image", "face box (x, y, w, h)", "top emotions"):
        table.add_column(column, overflow="fold")
    for result in results:
        if not result.faces:
            table.add_row(str(result.image), "[yellow]no face found[/]", "")
        for face in result.faces:
            box = "whole image" if face.box is None else ", ".join(map(str, face.box))
            top = ", ".join(f"{name} {probability:.2f}" for name, probability in face.top)
            table.add_row(str(result.image), box, top)
            if face.explanation is not None:
                where = ", ".join(face.explanation.layers)
                table.add_row(
                    "",
                    f"[dim]Grad-CAM of {face.explanation.emotion} at {where}[/]",
                    str(face.explanation.file),
                )
        if result.annotated is not None:
            table.add_row("", f"[dim]annotated: {result.annotated}[/]", "")
        if result.explained is not None:
            table.add_row("", "[dim]Grad-CAM maps in their boxes[/]", str(result.explained))
    return table


def video_face_line(result) -> str:
    """One line for a `fertrain.video.FrameResult`, as a camera prints them."""
    faces = "; ".join(
        f"({', '.join(map(str, face.box))}) {face.top} {max(face.probabilities):.0%}" for face in result.faces
    )
    return f"frame {result.frame} at {result.time_s:.2f} s: {faces or 'no face'}"


def video_summary_table(summary, title: str) -> Table:
    """The share of analysed frames per top emotion of their largest face, of a
    `fertrain.video.VideoSummary`, and how many frames and faces there were."""
    table = Table(title=f"{title}\n{summary.source}")
    table.add_column("top emotion (largest face)")
    table.add_column("frames", justify="right")
    table.add_column("share", justify="right")
    analysed = max(1, summary.frames_analysed)
    for emotion, count in summary.top_frames.most_common():
        table.add_row(emotion, str(count), f"{count / analysed:.1%}")
    table.add_section()
    stopped = {"end": "the end", "frames": "--frames", "interrupted": "Ctrl-C"}[summary.stopped]
    table.add_row("frames read", str(summary.frames_read), f"{summary.frames_per_s:.1f}/s")
    table.add_row("frames analysed", str(summary.frames_analysed), "")
    table.add_row("faces found", str(summary.faces), "")
    table.add_row("stopped at", stopped, "")
    return table


def comparison_table(comparison) -> Table:
    """A `fertrain.gate.Comparison`: accuracy and per-class recall beside the baseline's, with the
    difference's interval and McNemar's p-value."""
    baseline = " + ".join(comparison.baseline.summary["models"])
    table = Table(title=f"against the baseline {baseline} (same faces, same TTA)")
    for column in ("", "new", "baseline", "difference, points (95% CI)", "McNemar p"):
        table.add_column(column, justify="left" if not column else "right")
    overall, *per_class = [
        (
            label,
            f"{pair.new_accuracy:.2%}",
            f"{pair.baseline_accuracy:.2%}",
            pair.points(),
            f"{pair.p_value:.3g}",
        )
        for label, pair in comparison.rows()
    ]
    new_f1, old_f1 = (s["macro_f1"] for s in (comparison.new.summary, comparison.baseline.summary))
    macro_f1 = ("macro F1", f"{new_f1:.4f}", f"{old_f1:.4f}", f"{100 * (new_f1 - old_f1):+.2f}", "")
    for row in (overall, macro_f1, *per_class):
        table.add_row(*row)
    return table


def gates_table(gates) -> Table:
    """`fertrain.gate.Gate`s: one row each, passed or failed, with its figures."""
    table = Table(title="gates")
    for column in ("gate", "result", "figures"):
        table.add_column(column, overflow="fold")
    for gate in gates:
        table.add_row(gate.name, "[green]passed[/]" if gate.passed else "[red]FAILED[/]", gate.message)
    return table
