"""examples/ci/: the POSIX gate script run end to end on the bundled sample in a fresh directory,
and the GitHub Actions and GitLab CI files that call it."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ci"
SCRIPT = "examples/ci/gate.sh"


def test_github_and_gitlab_files_are_yaml_that_run_the_gate_script():
    github = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    (job,) = github["jobs"].values()
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert f"sh {SCRIPT}" in runs
    assert job["env"]["OUT"] == "ci-gate"
    (reports,) = [step["with"]["report_paths"] for step in job["steps"] if "junit" in step.get("uses", "")]
    assert reports == "ci-gate/reports/*.xml"

    gitlab = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    (job,) = gitlab.values()
    assert f"sh {SCRIPT}" in job["script"]
    assert job["variables"]["OUT"] == "ci-gate"
    assert job["artifacts"]["reports"]["junit"] == "ci-gate/reports/*.xml"
    assert job["artifacts"]["when"] == "always"  # reports of a failed gate are kept too
    assert (EXAMPLES.parents[1] / SCRIPT).is_file()


@pytest.mark.slow
def test_gate_script_runs_end_to_end_in_a_fresh_directory(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "EPOCHS": "1",
        "OUT": "out",
    }
    done = subprocess.run(
        ["sh", str(EXAMPLES / "gate.sh")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("gate passed: reports in out/reports")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["data", "reports", "run"]
    assert (tmp_path / "out" / "run" / "export" / "model.onnx").is_file()

    evaluate = ET.parse(tmp_path / "out" / "reports" / "evaluate.xml").getroot()
    cases = [case.get("name") for case in evaluate.iter("testcase")]
    assert cases == ["accuracy >= 0.1", "accuracy drop vs baseline <= 60 points"]
    assert evaluate.find("testsuite").get("failures") == "0"
    properties = {p.get("name"): p.get("value") for p in evaluate.iter("property")}
    assert properties["baseline"].endswith("fertrain/assets/model.keras")
    assert properties["faces"] == "196"

    export = ET.parse(tmp_path / "out" / "reports" / "export.xml").getroot()
    (case,) = export.iter("testcase")
    assert case.find("failure") is None and "max |p_export - p_keras|" in case.find("system-out").text

    summary = (tmp_path / "out" / "reports" / "summary.md").read_text()
    assert summary.startswith("### fertrain evaluate: ✅ 2 gates passed\n")
    assert "| accuracy (196 faces) |" in summary
