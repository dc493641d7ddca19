"""`fertrain evaluate --baseline` and its gates: the paired statistics against hand computations and a
published figure, gates on made-up predictions, the JUnit XML (parsed back and validated against the
schema in tests/fixtures/junit.xsd) and Markdown reports, and the CLI's exit codes with real models."""

from __future__ import annotations

import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_main import run_cli
from lxml import etree
from run_dirs import tiny_model_file, tiny_run
from scipy.stats import binomtest

from fertrain.data.ferplus import FERPLUS_CLASSES
from fertrain.errors import ConfigError, DataError, ModelError
from fertrain.evaluation import Evaluation
from fertrain.gate import (
    Thresholds,
    check_gates,
    compare,
    evaluate_with_gates,
    junit_xml,
    markdown_summary,
    mcnemar_exact_p,
    paired_difference,
    wilson_interval,
)
from fertrain.metrics import classification_metrics
from fertrain.models.class_names import with_class_names

JUNIT_SCHEMA = Path(__file__).parent / "fixtures" / "junit.xsd"
Z95 = 1.959963984540054


def validate_junit(text: str) -> ET.Element:
    """The report's root, after checking it against the JUnit schema CI systems read."""
    schema = etree.XMLSchema(etree.parse(str(JUNIT_SCHEMA)))
    document = etree.fromstring(text.encode("utf-8"))
    assert schema.validate(document), schema.error_log
    return ET.fromstring(text)


def correctness(both: int, new_only: int, baseline_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-face correctness of two models with these counts (a paired 2x2 table)."""
    new = [True] * both + [True] * new_only + [False] * baseline_only + [False] * neither
    baseline = [True] * both + [False] * new_only + [True] * baseline_only + [False] * neither
    return np.array(new), np.array(baseline)


def newcombe_by_hand(both: int, new_only: int, baseline_only: int, neither: int) -> tuple[float, float]:
    """Newcombe (1998) method 10 from scipy's Wilson intervals of the two accuracies."""
    a, b, c, d = both, new_only, baseline_only, neither
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = binomtest(a + b, n).proportion_ci(0.95, method="wilson")
    l2, u2 = binomtest(a + c, n).proportion_ci(0.95, method="wilson")
    cross = a * d - b * c
    if cross > n / 2:
        cross -= n / 2
    elif cross >= 0:
        cross = 0
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = cross / math.sqrt(margins) if margins else 0.0
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = p1 - p2 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return low, high


# (both right, only new right, only baseline right, neither): the correlation term positive and
# reduced by n/2, zero (0 <= ad - bc <= n/2), negative, and a margin of 0 (the new model never wrong).
TABLES = [(59, 6, 16, 80), (15, 6, 5, 4), (5, 5, 5, 6), (2, 30, 3, 1), (50, 10, 0, 0), (400, 470, 380, 2339)]


@pytest.mark.parametrize("table", TABLES)
def test_mcnemar_p_and_newcombe_interval_match_scipy_and_the_hand_computation(table):
    new, baseline = correctness(*table)
    pair = paired_difference(new, baseline)
    both, new_only, baseline_only, neither = table
    n = sum(table)
    assert (pair.both, pair.new_only, pair.baseline_only, pair.neither) == table
    assert pair.difference == pytest.approx((new_only - baseline_only) / n, abs=1e-15)
    assert pair.p_value == pytest.approx(binomtest(new_only, new_only + baseline_only, 0.5).pvalue, rel=1e-9)
    low, high = newcombe_by_hand(*table)
    assert (pair.low, pair.high) == pytest.approx((low, high), abs=1e-9)
    assert pair.low <= pair.difference <= pair.high


def test_the_interval_and_p_value_of_a_published_example():
    # Cavo et al. (2012), complete response before/after consolidation therapy: Fagerland, Lydersen
    # and Laake's "Statistical Analysis of Contingency Tables", chapter 8, give Newcombe's interval
    # -0.1186 to -0.0046 for the difference -0.0621, and McNemar's exact p = 0.052.
    pair = paired_difference(*correctness(59, 6, 16, 80))
    assert round(pair.difference, 4) == -0.0621
    assert (round(pair.low, 4), round(pair.high, 4)) == (-0.1186, -0.0046)
    assert round(pair.p_value, 3) == 0.052
    # By hand: 2 * P(X <= 6) for X ~ Binomial(22, 1/2) = 2 * 110056 / 2**22.
    assert pair.p_value == pytest.approx(2 * 110056 / 2**22, rel=1e-12)


def test_mcnemar_without_discordant_faces_is_1_and_wilson_matches_scipy():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(7, 7) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    for successes, n in [(0, 10), (3, 10), (10, 10), (121, 196)]:
        expected = binomtest(successes, n).proportion_ci(0.95, method="wilson")
        assert wilson_interval(successes, n, Z95) == pytest.approx((expected.low, expected.high), abs=1e-12)


CLASSES = ("angry", "happy", "sad")


def made_up_evaluation(labels, correct, models=("new.keras",), classes=CLASSES, seed=0) -> Evaluation:
    """An evaluation whose predictions are right where `correct` says (else the next class); faces
    are random pixels drawn from `seed`, so two evaluations share faces when they share the seed."""
    labels = np.asarray(labels)
    predictions = np.where(correct, labels, (labels + 1) % len(classes))
    probabilities = np.eye(len(classes))[predictions]
    summary = {
        "models": list(models),
        "data_dir": "prepared/x",
        "split": "test",
        "tta": "none",
        "normalize": "raw",
        **classification_metrics(labels, probabilities, classes),
    }
    faces = np.random.default_rng(seed).integers(0, 256, (len(labels), 48, 48), dtype=np.uint8)
    return Evaluation(summary, faces, labels, probabilities, ())


@pytest.fixture
def pair_of_evaluations() -> tuple[Evaluation, Evaluation]:
    """10 faces of each class. angry: the new model right on 8, the baseline on 9 (recall -10 points);
    happy: 7 vs 5 (+20); sad: 6 vs 6, on different faces. Overall 21 vs 20 of 30 (+3.33 points)."""
    labels = np.repeat([0, 1, 2], 10)
    angry = np.arange(10)
    new = np.concatenate([angry < 8, angry < 7, angry < 6])
    baseline = np.concatenate([angry < 9, (angry >= 2) & (angry < 7), angry >= 4])
    return made_up_evaluation(labels, new), made_up_evaluation(labels, baseline, models=("old.keras",))


def test_comparison_pairs_the_faces_overall_and_per_class(pair_of_evaluations):
    new, baseline = pair_of_evaluations
    comparison = compare(new, baseline)
    overall = comparison.overall
    assert (overall.both, overall.new_only, overall.baseline_only, overall.neither) == (15, 6, 5, 4)
    assert (overall.new_accuracy, overall.baseline_accuracy) == (21 / 30, 20 / 30)
    assert overall.p_value == pytest.approx(binomtest(6, 11).pvalue)
    angry, happy, sad = comparison.per_class
    assert (angry.both, angry.new_only, angry.baseline_only, angry.neither) == (8, 0, 1, 1)
    assert (happy.new_accuracy, happy.baseline_accuracy) == (0.7, 0.5)
    assert (sad.new_only, sad.baseline_only, sad.p_value) == (4, 4, 1.0)
    assert sad.new_accuracy == new.summary["per_class"][2]["recall"] == 0.6
    assert [label for label, _ in comparison.rows()] == [
        "accuracy",
        "angry recall",
        "happy recall",
        "sad recall",
    ]


def test_each_gate_passes_at_its_threshold_and_fails_just_past_it(pair_of_evaluations):
    new, baseline = pair_of_evaluations
    forward, backward = compare(new, baseline), compare(baseline, new)  # +3.33 and -3.33 points

    def verdicts(evaluation, comparison, **thresholds):
        return [gate.passed for gate in check_gates(evaluation, comparison, Thresholds(**thresholds))]

    assert verdicts(new, forward, min_accuracy=0.7) == [True]
    assert verdicts(new, forward, min_accuracy=0.71) == [False]
    assert verdicts(new, forward, max_drop=0.0) == [True]  # a gain passes any allowance
    assert verdicts(baseline, backward, max_drop=100 / 30) == [True]
    assert verdicts(baseline, backward, max_drop=3.33) == [False]
    # Per class, in class order: angry's recall drops 10 points, happy gains 20, sad stays.
    assert verdicts(new, forward, per_class_max_drop=10) == [True, True, True]
    assert verdicts(new, forward, per_class_max_drop=9.99) == [False, True, True]
    assert verdicts(baseline, backward, per_class_max_drop=15) == [True, False, True]
    gates = check_gates(new, forward, Thresholds(0.75, 0.0, 5.0))
    assert [gate.name for gate in gates] == [
        "accuracy >= 0.75",
        "accuracy drop vs baseline <= 0 points",
        "angry: recall drop vs baseline <= 5 points",
        "happy: recall drop vs baseline <= 5 points",
        "sad: recall drop vs baseline <= 5 points",
    ]
    assert gates[0].message == "accuracy 0.7000 is below --min-accuracy 0.75 (30 faces)"
    assert gates[2].message.startswith("angry recall 80.00% vs baseline 90.00% on 10 faces: -10.00 points")
    assert gates[2].message.endswith("McNemar p = 1), a larger drop than --per-class-max-drop 5")
    assert check_gates(new, None, Thresholds(max_drop=1.0, per_class_max_drop=1.0)) == ()


def test_junit_report_has_one_case_per_gate_and_failures_carry_the_figures(pair_of_evaluations):
    new, baseline = pair_of_evaluations
    gates = check_gates(new, compare(new, baseline), Thresholds(0.75, 0.0, 5.0))
    root = validate_junit(junit_xml("fertrain.evaluate", gates, {"models": "new.keras", "split": "test"}))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "2", "0")
    assert {p.get("name"): p.get("value") for p in suite.iter("property")} == {
        "models": "new.keras",
        "split": "test",
    }
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == [gate.name for gate in gates]
    failed = {case.get("name"): case.find("failure") for case in cases if case.find("failure") is not None}
    assert set(failed) == {"accuracy >= 0.75", "angry: recall drop vs baseline <= 5 points"}
    assert (
        failed["accuracy >= 0.75"].get("message") == "accuracy 0.7000 is below --min-accuracy 0.75 (30 faces)"
    )
    assert "80.00% vs baseline 90.00%" in failed["angry: recall drop vs baseline <= 5 points"].text
    assert "70.00% vs baseline 66.67% on 30 faces: +3.33 points" in cases[1].find("system-out").text
    empty = validate_junit(junit_xml("fertrain.evaluate", [], {}))
    assert empty.find("testsuite").get("tests") == "0"


def test_markdown_summary_puts_the_figures_beside_the_baseline(pair_of_evaluations):
    new, baseline = pair_of_evaluations
    comparison = compare(new, baseline)
    gates = check_gates(new, comparison, Thresholds(max_drop=1.0, per_class_max_drop=5.0))
    text = markdown_summary(new, comparison, gates)
    lines = text.splitlines()
    assert lines[0] == "### fertrain evaluate: ❌ 1 of 4 gates failed"
    interval = comparison.overall
    assert f"| accuracy (30 faces) | 70.00% | 66.67% | +3.33 ({100 * interval.low:+.2f} to " in text
    assert "| happy recall (10 faces) | 70.00% | 50.00% | +20.00 (" in text
    assert "| angry: recall drop vs baseline <= 5 points | ❌ **failed**: angry recall 80.00%" in text
    alone = markdown_summary(new, None, ())
    assert alone.splitlines()[0] == "### fertrain evaluate: no gates"
    assert "| sad recall (10 faces) | 60.00% |" in alone


def test_comparison_refuses_other_classes_and_other_faces(pair_of_evaluations):
    new, baseline = pair_of_evaluations
    labels, correct = new.labels, np.ones(30, bool)
    other_classes = made_up_evaluation(labels, correct, ("old.keras",), ("sad", "happy", "angry"))
    with pytest.raises(
        ModelError, match=r"old.keras: the baseline predicts \(sad, happy, angry\) but new.keras"
    ):
        compare(new, other_classes)
    other_faces = made_up_evaluation(labels, correct, ("old.keras",), seed=1)
    with pytest.raises(DataError, match="no faces in common: new.keras was scored on 30 faces of prepared/x"):
        compare(new, other_faces)
    # FER+ data whose split has no face with a strict majority leaves nothing to score.
    summary = {**new.summary, "num_images": 0}
    nothing = Evaluation(summary, new.faces[:0], new.labels[:0], new.probabilities[:0], ())
    with pytest.raises(DataError, match="no faces in common"):
        compare(nothing, nothing)


def test_drop_gates_without_a_baseline_are_refused():
    with pytest.raises(ConfigError, match="--max-drop and --per-class-max-drop compare with a baseline"):
        evaluate_with_gates(["bundled"], thresholds=Thresholds(max_drop=1.0))


# ---- the command, with real models -------------------------------------------------------------


@pytest.fixture(scope="module")
def new_model(tmp_path_factory, prepared_sample) -> Path:
    """A tiny model fitted for one epoch on the sample: far below the bundled model."""
    return tiny_model_file(tmp_path_factory.getbasetemp(), prepared_sample, seed=1)


@pytest.fixture(scope="module")
def figures(new_model, prepared_sample, tmp_path_factory) -> dict:
    """`evaluate NEW --baseline bundled --json`'s comparison, to place thresholds around."""
    from fertrain.gate import evaluate_with_gates as gated

    return gated([new_model], prepared_sample, baseline="bundled").to_dict()


def evaluate_cli(args, capsys, monkeypatch):
    return run_cli(["evaluate", *map(str, args)], capsys, monkeypatch)


@pytest.mark.slow
def test_exit_codes_of_each_gate(new_model, prepared_sample, figures, tmp_path, capsys, monkeypatch):
    accuracy = figures["accuracy"]
    drop = -100 * figures["comparison"]["accuracy"]["difference"]
    class_drops = [-100 * row["difference"] for row in figures["comparison"]["per_class_recall"]]
    worst = max(class_drops)
    assert drop > 20 and figures["comparison"]["baseline"]["accuracy"] > 0.6  # bundled vs one epoch
    base = [new_model, "--data", prepared_sample, "--baseline", "bundled"]
    report = tmp_path / "report.xml"
    passing = ["--min-accuracy", accuracy, "--max-drop", drop + 1e-6, "--per-class-max-drop", worst + 1e-6]
    code, out, err = evaluate_cli([*base, *passing, "--junit-xml", report], capsys, monkeypatch)
    assert code == 0, err
    assert "against the baseline" in out and f"wrote {report}" in out
    suite = validate_junit(report.read_text()).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == (str(2 + len(class_drops)), "0")

    failing = {
        "--min-accuracy": (accuracy + 0.01, "is below --min-accuracy"),
        "--max-drop": (drop - 0.1, "a larger drop than --max-drop"),
        "--per-class-max-drop": (worst - 0.1, "a larger drop than --per-class-max-drop"),
    }
    for option, (value, expected) in failing.items():
        args = list(passing)
        args[args.index(option) + 1] = value
        code, _, err = evaluate_cli([*base, *args, "--junit-xml", report, "--json"], capsys, monkeypatch)
        assert code == 3, (option, err)
        assert expected in err and len(err.strip().splitlines()) == 1
        suite = validate_junit(report.read_text()).find("testsuite")
        failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
        if option == "--per-class-max-drop":
            worst_classes = [
                row["class"]
                for row, d in zip(figures["comparison"]["per_class_recall"], class_drops, strict=True)
                if d > worst - 0.1
            ]
            assert failed == [
                f"{name}: recall drop vs baseline <= {worst - 0.1:g} points" for name in worst_classes
            ]
        else:
            assert len(failed) == 1 and failed[0].startswith("accuracy")


@pytest.mark.slow
def test_json_markdown_and_the_baseline_run_directory_left_alone(
    new_model, prepared_sample, tmp_path_factory, tmp_path, capsys, monkeypatch
):
    baseline_run = tmp_path / "baseline-run"
    shutil.copytree(tiny_run(tmp_path_factory.getbasetemp(), prepared_sample), baseline_run)
    for old in baseline_run.glob("evaluation-*.json"):
        old.unlink()
    summary = tmp_path / "summary.md"
    args = [new_model, "--data", prepared_sample, "--baseline", baseline_run, "--tta", "flip"]
    code, out, err = evaluate_cli([*args, "--json", "--markdown", summary], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    comparison = result["comparison"]
    assert comparison["baseline"]["models"] == [str(baseline_run / "model.keras")]
    assert comparison["baseline"]["tta"] == result["tta"] == "flip"
    assert comparison["accuracy"]["new"] == result["accuracy"]
    assert comparison["accuracy"]["baseline"] == comparison["baseline"]["accuracy"]
    assert "gates" not in result
    assert not list(baseline_run.glob("evaluation-*.json"))  # the baseline is scored, not written to
    text = summary.read_text()
    assert text.startswith("### fertrain evaluate: no gates\n")
    assert (
        f"| accuracy (196 faces) | {result['accuracy']:.2%} | {comparison['accuracy']['baseline']:.2%} |"
        in text
    )


def untrained_model(path: Path, classes: tuple[str, ...]) -> Path:
    inputs = keras.Input((48, 48, 1))
    outputs = keras.layers.Dense(len(classes), activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, with_class_names(outputs, classes)).save(path)
    return path


def ferplus_without_majorities(directory: Path) -> Path:
    """A prepared FER+ test split whose faces' votes all split 3-3-3-1: none has a strict majority."""
    directory.mkdir()
    votes = np.zeros((8, 10), np.uint8)
    votes[:, :4] = (3, 3, 3, 1)
    images = np.random.default_rng(0).integers(0, 256, (8, 48, 48), dtype=np.uint8)
    np.savez(directory / "test.npz", images=images, labels=np.zeros(8, np.uint8), votes=votes)
    (directory / "manifest.json").write_text(json.dumps({"classes": list(FERPLUS_CLASSES)}))
    return directory


@pytest.mark.slow
def test_bad_input_is_one_line(new_model, prepared_sample, tmp_path, capsys, monkeypatch):
    data = ["--data", prepared_sample]
    reversed_emotions = ("neutral", "surprise", "sad", "happy", "fear", "disgust", "angry")
    other = untrained_model(tmp_path / "reversed.keras", reversed_emotions)
    ferplus = untrained_model(tmp_path / "ferplus.keras", FERPLUS_CLASSES)
    no_majority = ferplus_without_majorities(tmp_path / "no-majority")
    cases = [
        (
            [new_model, *data, "--baseline", other],
            2,
            "reversed.keras: the baseline predicts (neutral, surprise",
        ),
        ([new_model, *data, "--max-drop", "1"], 2, "add --baseline MODEL"),
        ([new_model, *data, "--baseline", tmp_path / "missing.keras"], 2, "missing.keras: no such model"),
        (
            [ferplus, "--data", no_majority, "--baseline", ferplus],
            2,
            "no-majority/test.npz: no face has a strict majority of FER+ votes",
        ),
        (
            [new_model, *data, "--markdown", tmp_path / "reversed.keras" / "summary.md"],
            5,
            "reversed.keras: exists and is not a folder",
        ),
    ]
    for args, expected_code, expected in cases:
        code, _, err = evaluate_cli(args, capsys, monkeypatch)
        assert code == expected_code, err
        assert expected in " ".join(err.split()), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_export_check_as_a_junit_report(prepared_sample, tmp_path_factory, tmp_path, capsys, monkeypatch):
    run_dir = tiny_run(tmp_path_factory.getbasetemp(), prepared_sample)
    args = ["export", run_dir, "--format", "keras", "--out", tmp_path / "m.keras"]
    code, out, err = run_cli([*args, "--junit-xml", tmp_path / "pass.xml"], capsys, monkeypatch)
    assert code == 0, err
    assert f"wrote {tmp_path / 'pass.xml'}" in out
    suite = validate_junit((tmp_path / "pass.xml").read_text()).find("testsuite")
    (case,) = suite.iter("testcase")
    assert case.get("name") == "keras export matches the Keras model" and case.find("failure") is None
    assert "max |p_export - p_keras|" in case.find("system-out").text

    monkeypatch.setattr("fertrain.export.FLOAT_TOLERANCE", -1.0)  # no export can meet it
    code, _, err = run_cli([*args, "--junit-xml", tmp_path / "fail.xml"], capsys, monkeypatch)
    assert code == 3 and "export check failed" in err
    suite = validate_junit((tmp_path / "fail.xml").read_text()).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    message = suite.find("testcase").find("failure").get("message")
    # The export's own criterion (which names the runtimes checked), then the images it was checked on.
    assert re.search(r"max \|p_export - p_keras\| \d\.\d\de[-+]\d\d \(needs <= -1e\+00\)", message)
    assert message.endswith(" on 196 test images")
