"""Quality gates for CI pipelines: a model's accuracy against thresholds and against a baseline model
scored on the same faces, reported as JUnit XML (which GitLab, Jenkins and GitHub's test-report
actions display) and as a Markdown summary (for a merge-request comment or `$GITHUB_STEP_SUMMARY`).

Both models classify the same faces with the same TTA, so the comparison is paired: what separates
them is the faces one gets right and the other wrong. The p-value is McNemar's exact test (those
discordant faces against a fair coin, two-sided); the interval of the accuracy difference is
Newcombe's hybrid score interval for paired proportions (Newcombe 1998, method 10), which combines
the Wilson intervals of the two accuracies with their correlation on the same faces. A per-class
comparison is the same test on the faces of that class (recall). Gates compare the point estimates
with their thresholds; the interval and the p-value say how far to trust a difference.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from fertrain.errors import ConfigError, DataError, ModelError
from fertrain.evaluation import Evaluation, evaluate
from fertrain.fileio import write_atomic
from fertrain.inference import LoadedModel, ensemble_classes, load_classifier

CONFIDENCE = 0.95
EVALUATE_SUITE = "fertrain.evaluate"
EXPORT_SUITE = "fertrain.export"


@dataclass(frozen=True)
class PairedDifference:
    """Two classifiers on the same faces: how many both get right, only the new one, only the
    baseline, neither; the `confidence` interval of the accuracy difference (new - baseline, as a
    fraction) and McNemar's exact two-sided p-value."""

    both: int
    new_only: int
    baseline_only: int
    neither: int
    low: float
    high: float
    p_value: float

    @property
    def faces(self) -> int:
        return self.both + self.new_only + self.baseline_only + self.neither

    @property
    def new_accuracy(self) -> float:
        return (self.both + self.new_only) / self.faces

    @property
    def baseline_accuracy(self) -> float:
        return (self.both + self.baseline_only) / self.faces

    @property
    def difference(self) -> float:
        return (self.new_only - self.baseline_only) / self.faces

    def points(self) -> str:
        """The difference and its interval in percentage points, e.g. "-2.04 (-5.10 to +1.03)"."""
        return f"{_points(self.difference)} ({_points(self.low)} to {_points(self.high)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "faces": self.faces,
            "new": self.new_accuracy,
            "baseline": self.baseline_accuracy,
            "difference": self.difference,
        }


def mcnemar_exact_p(new_only: int, baseline_only: int) -> float:
    """Two-sided p-value of McNemar's exact test: if both models were equally accurate, each face
    only one of them gets right would be a fair coin toss, so the smaller count is Binomial(n, 1/2)
    with n the discordant faces. Exact integer sums: FER2013's test splits have ~1,000 of them."""
    discordant = new_only + baseline_only
    tail = sum(math.comb(discordant, k) for k in range(min(new_only, baseline_only) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion (z: the normal quantile of the confidence)."""
    p = successes / n
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _newcombe_phi(both: int, new_only: int, baseline_only: int, neither: int) -> float:
    """The correlation of the two models' correctness, with Newcombe's continuity correction: a
    positive cross-product difference is reduced by n/2 (to no less than 0)."""
    margins = (both + new_only) * (baseline_only + neither) * (both + baseline_only) * (new_only + neither)
    if margins == 0:
        return 0.0
    cross = both * neither - new_only * baseline_only
    half = (both + new_only + baseline_only + neither) / 2
    corrected = cross - half if cross > half else min(cross, 0)
    return corrected / math.sqrt(margins)


def paired_difference(
    new_correct: np.ndarray, baseline_correct: np.ndarray, confidence: float = CONFIDENCE
) -> PairedDifference:
    """McNemar's exact test and Newcombe's interval (method 10) for two models' per-face
    correctness (booleans, same faces in the same order)."""
    new_correct = np.asarray(new_correct, dtype=bool)
    baseline_correct = np.asarray(baseline_correct, dtype=bool)
    if len(new_correct) == 0:
        raise DataError("no faces to compare the models on")
    both = int(np.sum(new_correct & baseline_correct))
    new_only = int(np.sum(new_correct & ~baseline_correct))
    baseline_only = int(np.sum(~new_correct & baseline_correct))
    neither = len(new_correct) - both - new_only - baseline_only
    n = len(new_correct)
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p1, p2 = (both + new_only) / n, (both + baseline_only) / n
    l1, u1 = wilson_interval(both + new_only, n, z)
    l2, u2 = wilson_interval(both + baseline_only, n, z)
    phi = _newcombe_phi(both, new_only, baseline_only, neither)
    # |phi| <= 1 keeps both radicands >= (x - y)^2 >= 0; max() only absorbs rounding.
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return PairedDifference(
        both,
        new_only,
        baseline_only,
        neither,
        low=p1 - p2 - below,
        high=p1 - p2 + above,
        p_value=mcnemar_exact_p(new_only, baseline_only),
    )


@dataclass(frozen=True)
class Comparison:
    """The `new` model against the `baseline` on the same faces: overall, and per class (the recall;
    None for a class without faces)."""

    new: Evaluation
    baseline: Evaluation
    overall: PairedDifference
    per_class: tuple[PairedDifference | None, ...]

    def rows(self) -> list[tuple[str, PairedDifference]]:
        """("accuracy", overall), then ("<class> recall", its pair) for each class with faces."""
        classes = self.baseline.summary["class_names"]
        per_class = [
            (f"{name} recall", pair)
            for name, pair in zip(classes, self.per_class, strict=True)
            if pair is not None
        ]
        return [("accuracy", self.overall), *per_class]

    def to_dict(self) -> dict[str, Any]:
        classes = self.baseline.summary["class_names"]
        return {
            "method": f"McNemar's exact test; Newcombe's hybrid score {CONFIDENCE:.0%} interval (method 10)",
            "baseline": self.baseline.summary,
            "accuracy": self.overall.to_dict(),
            "per_class_recall": [
                {"class": name, **(pair.to_dict() if pair is not None else {"faces": 0})}
                for name, pair in zip(classes, self.per_class, strict=True)
            ],
        }


def compare(new: Evaluation, baseline: Evaluation, confidence: float = CONFIDENCE) -> Comparison:
    """Pairs two evaluations face by face; they must have scored the same faces in the same order."""
    _check_same_classes(
        _models(baseline),
        tuple(baseline.summary["class_names"]),
        _models(new),
        tuple(new.summary["class_names"]),
    )
    same = np.array_equal(new.labels, baseline.labels) and np.array_equal(new.faces, baseline.faces)
    if len(new.labels) == 0 or not same:
        raise DataError(
            f"no faces in common: {_models(new)} was scored on {len(new.labels)} faces of "
            f"{_where(new)}, the baseline {_models(baseline)} on {len(baseline.labels)} faces of "
            f"{_where(baseline)}; score both on the same split"
        )
    new_correct = np.argmax(new.probabilities, axis=1) == new.labels
    baseline_correct = np.argmax(baseline.probabilities, axis=1) == baseline.labels
    per_class = tuple(
        paired_difference(new_correct[of], baseline_correct[of], confidence) if of.any() else None
        for of in (new.labels == k for k in range(len(new.summary["class_names"])))
    )
    overall = paired_difference(new_correct, baseline_correct, confidence)
    return Comparison(new, baseline, overall, per_class)


def _models(evaluation: Evaluation) -> str:
    return " + ".join(evaluation.summary["models"])


def _where(evaluation: Evaluation) -> str:
    return f"{evaluation.summary['data_dir']} ({evaluation.summary['split']})"


def _check_same_classes(
    baseline: str, baseline_classes: tuple[str, ...], new: str, new_classes: tuple[str, ...]
) -> None:
    if baseline_classes != new_classes:
        raise ModelError(
            f"{baseline}: the baseline predicts ({', '.join(baseline_classes)}) but {new} predicts "
            f"({', '.join(new_classes)}); compare models with the same classes in the same order"
        )


@dataclass(frozen=True)
class Thresholds:
    """`min_accuracy` as a fraction; the drops in percentage points of accuracy (per class: recall)."""

    min_accuracy: float | None = None
    max_drop: float | None = None
    per_class_max_drop: float | None = None


@dataclass(frozen=True)
class Gate:
    """One pass/fail check: a test case of the JUnit report. `message` states its figures."""

    name: str
    passed: bool
    message: str


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.2f}"


def _drop_gate(name: str, what: str, pair: PairedDifference, option: str, allowed: float) -> Gate:
    # The drop in points from the integer counts, so that e.g. one face in 200 is exactly 0.5.
    drop = 100 * (pair.baseline_only - pair.new_only) / pair.faces
    passed = drop <= allowed
    message = (
        f"{what} {pair.new_accuracy:.2%} vs baseline {pair.baseline_accuracy:.2%} on {pair.faces} faces: "
        f"{_points(pair.difference)} points ({CONFIDENCE:.0%} CI {_points(pair.low)} to "
        f"{_points(pair.high)}, McNemar p = {pair.p_value:.3g}), "
        f"{'within' if passed else 'a larger drop than'} {option} {allowed:g}"
    )
    return Gate(name, passed, message)


def check_gates(
    evaluation: Evaluation, comparison: Comparison | None, thresholds: Thresholds
) -> tuple[Gate, ...]:
    """The gates `thresholds` asks for, in report order: overall accuracy, the baseline comparison,
    then each class that has faces."""
    gates = []
    if thresholds.min_accuracy is not None:
        accuracy, minimum = evaluation.summary["accuracy"], thresholds.min_accuracy
        passed = accuracy >= minimum
        verdict = "is at least" if passed else "is below"
        gates.append(
            Gate(
                f"accuracy >= {minimum:g}",
                passed,
                f"accuracy {accuracy:.4f} {verdict} --min-accuracy {minimum:g} "
                f"({evaluation.summary['num_images']} faces)",
            )
        )
    if comparison is not None and thresholds.max_drop is not None:
        gates.append(
            _drop_gate(
                f"accuracy drop vs baseline <= {thresholds.max_drop:g} points",
                "accuracy",
                comparison.overall,
                "--max-drop",
                thresholds.max_drop,
            )
        )
    if comparison is not None and thresholds.per_class_max_drop is not None:
        allowed = thresholds.per_class_max_drop
        for name, pair in zip(evaluation.summary["class_names"], comparison.per_class, strict=True):
            if pair is not None:
                gates.append(
                    _drop_gate(
                        f"{name}: recall drop vs baseline <= {allowed:g} points",
                        f"{name} recall",
                        pair,
                        "--per-class-max-drop",
                        allowed,
                    )
                )
    return tuple(gates)


def junit_xml(suite: str, gates: Sequence[Gate], properties: dict[str, str]) -> str:
    """A JUnit XML report: one <testsuite> named `suite`, one <testcase> per gate, a <failure> carrying
    the figures for each failed one (and the figures as <system-out> for the passed ones)."""
    failures = sum(not gate.passed for gate in gates)
    counts = {"tests": str(len(gates)), "failures": str(failures), "errors": "0"}
    root = ET.Element("testsuites", {"name": suite, **counts})
    testsuite = ET.SubElement(root, "testsuite", {"name": suite, **counts, "skipped": "0"})
    listed = ET.SubElement(testsuite, "properties")
    for key, value in properties.items():
        ET.SubElement(listed, "property", {"name": key, "value": value})
    for gate in gates:
        case = ET.SubElement(testsuite, "testcase", {"classname": suite, "name": gate.name})
        if gate.passed:
            ET.SubElement(case, "system-out").text = gate.message
        else:
            ET.SubElement(
                case, "failure", {"type": "BelowThreshold", "message": gate.message}
            ).text = gate.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def export_junit(result) -> str:
    """The JUnit report of a `fertrain.export.ExportResult`: its check as the one test case."""
    kind = f"{result.format} ({result.quantize})" if result.quantize else result.format
    check = result.check
    gate = Gate(
        f"{kind} export matches the Keras model",
        check.passed,
        f"{check.criterion} on {check.images} {check.split} images",
    )
    properties = {"export": str(result.path), "format": result.format, "quantize": result.quantize or "none"}
    return junit_xml(EXPORT_SUITE, [gate], properties)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_summary(evaluation: Evaluation, comparison: Comparison | None, gates: Sequence[Gate]) -> str:
    """A short Markdown summary: the verdict, the figures (beside the baseline's), one row per gate."""
    summary = evaluation.summary
    failed = sum(not gate.passed for gate in gates)
    if not gates:
        verdict = "no gates"
    elif failed:
        verdict = f"❌ {failed} of {len(gates)} gates failed"
    else:
        verdict = f"✅ {len(gates)} gates passed"
    lines = [
        f"### fertrain evaluate: {verdict}",
        "",
        f"`{_models(evaluation)}`"
        + (f" against the baseline `{_models(comparison.baseline)}`" if comparison else "")
        + f" on {summary['num_images']} faces of `{summary['data_dir']}` ({summary['split']} split, "
        f"TTA {summary['tta']})",
        "",
    ]
    if comparison is None:
        lines += ["| | value |", "|---|---:|", f"| accuracy | {summary['accuracy']:.2%} |"]
        lines.append(f"| macro-F1 | {summary['macro_f1']:.4f} |")
        lines += [
            f"| {_cell(row['class'])} recall ({row['support']} faces) | {row['recall']:.2%} |"
            for row in summary["per_class"]
        ]
    else:
        base = comparison.baseline.summary
        rows = [
            f"| {_cell(label)} ({pair.faces} faces) | {pair.new_accuracy:.2%} | {pair.baseline_accuracy:.2%} "
            f"| {pair.points()} | {pair.p_value:.3g} |"
            for label, pair in comparison.rows()
        ]
        macro_f1 = (
            f"| macro-F1 | {summary['macro_f1']:.4f} | {base['macro_f1']:.4f} | "
            f"{_points(summary['macro_f1'] - base['macro_f1'])} | |"
        )
        lines += [
            f"| | new | baseline | difference, points ({CONFIDENCE:.0%} CI) | McNemar p |",
            "|---|---:|---:|---:|---:|",
            rows[0],
            macro_f1,
            *rows[1:],
        ]
        lines.append("")
        lines.append(
            "Interval: Newcombe's hybrid score interval for paired proportions; p: McNemar's exact test."
        )
    if gates:
        lines += ["", "| gate | result |", "|---|---|"]
        for gate in gates:
            result = "✅ passed" if gate.passed else "❌ **failed**"
            lines.append(f"| {_cell(gate.name)} | {result}: {_cell(gate.message)} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class GatedEvaluation:
    """An evaluation, its comparison with a baseline (if any) and its gates; `written` lists every
    file written (the evaluation's, then the reports)."""

    evaluation: Evaluation
    comparison: Comparison | None
    gates: tuple[Gate, ...]
    written: tuple[Path, ...]

    @property
    def failed(self) -> tuple[Gate, ...]:
        return tuple(gate for gate in self.gates if not gate.passed)

    def to_dict(self) -> dict[str, Any]:
        """`evaluate --json`: the evaluation's summary, with the comparison and the gates when there
        are any."""
        extra: dict[str, Any] = {}
        if self.comparison is not None:
            extra["comparison"] = self.comparison.to_dict()
        if self.gates:
            extra["gates"] = [asdict(gate) for gate in self.gates]
        return {**self.evaluation.summary, **extra}


def _baseline_model(baseline: str | Path, new_models: Sequence[LoadedModel]) -> LoadedModel:
    """The baseline, loaded and checked before anything is scored."""
    model = load_classifier(baseline)
    _check_same_classes(str(model.path), model.classes, str(new_models[0].path), ensemble_classes(new_models))
    return model


def evaluate_with_gates(
    targets: Sequence[str | Path],
    data_dir: str | Path | None = None,
    split: str = "test",
    tta: str = "none",
    normalize: str = "raw",
    batch_size: int = 256,
    out: str | Path | None = None,
    baseline: str | Path | None = None,
    thresholds: Thresholds | None = None,
    junit_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
) -> GatedEvaluation:
    """`fertrain.evaluation.evaluate` of `targets`, and of `baseline` on the same faces with the same
    TTA and scaling, then the gates of `thresholds`; the reports are written even when a gate fails.

    The baseline's run directory (if it is one) is left untouched.
    """
    thresholds = thresholds or Thresholds()
    if baseline is None and (thresholds.max_drop is not None or thresholds.per_class_max_drop is not None):
        raise ConfigError("--max-drop and --per-class-max-drop compare with a baseline: add --baseline MODEL")
    if not targets:
        raise DataError("no model given: pass a run directory or a model file")
    models = [load_classifier(target) for target in targets]
    baseline_model = _baseline_model(baseline, models) if baseline is not None else None
    options = {"split": split, "tta": tta, "normalize": normalize, "batch_size": batch_size}
    evaluation = evaluate(models, data_dir, out=out, **options)
    comparison = None
    if baseline_model is not None:
        scored = evaluate([baseline_model], evaluation.summary["data_dir"], write_run_files=False, **options)
        comparison = compare(evaluation, scored)
    gates = check_gates(evaluation, comparison, thresholds)
    written = list(evaluation.written)
    if junit_path is not None:
        properties = {
            "models": _models(evaluation),
            "data": evaluation.summary["data_dir"],
            "split": split,
            "faces": str(evaluation.summary["num_images"]),
            "tta": tta,
        }
        if comparison is not None:
            properties["baseline"] = _models(comparison.baseline)
        written.append(write_atomic(junit_path, junit_xml(EVALUATE_SUITE, gates, properties)))
    if markdown_path is not None:
        written.append(write_atomic(markdown_path, markdown_summary(evaluation, comparison, gates)))
    return GatedEvaluation(evaluation, comparison, gates, tuple(written))
