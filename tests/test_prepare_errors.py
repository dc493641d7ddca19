"""Bad input to `fertrain prepare`: one line naming the file and line, exit code 2, no traceback,
and an existing output directory left exactly as it was."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_main import run_cli
from fer2013_forms import (
    csv_text,
    first_rows_per_usage,
    sample_rows,
    write_csv,
    write_image_folder,
    write_npy_quartet,
)

from fertrain.data import load_manifest, load_split
from fertrain.data.prepare import prepare
from fertrain.errors import DataError


@pytest.fixture(scope="module")
def rows(sample_csv):
    """Two rows of each split: lines 2-3 Training, 4-5 PublicTest, 6-7 PrivateTest."""
    return first_rows_per_usage(sample_rows(sample_csv), 2)


@pytest.fixture
def good_out(tmp_path, prepared_sample):
    """An existing good output directory, and a snapshot of its bytes."""
    out = tmp_path / "prepared"
    shutil.copytree(prepared_sample, out)
    return out, {path.name: path.read_bytes() for path in out.iterdir()}


def assert_intact(good_out):
    out, snapshot = good_out
    assert {path.name: path.read_bytes() for path in out.iterdir()} == snapshot
    assert sorted(path.name for path in out.parent.iterdir() if path.name.startswith(".")) == []


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def with_line(text: str, line_number: int, edit) -> str:
    lines = text.splitlines()
    lines[line_number - 1] = edit(lines[line_number - 1])
    return "\n".join(lines) + "\n"


def drop_last_pixel(line):
    emotion, pixels, usage = line.split(",")
    return f"{emotion},{pixels.rsplit(' ', 1)[0]},{usage}"


def set_pixel(value):
    def edit(line):
        emotion, pixels, usage = line.split(",")
        values = pixels.split(" ")
        values[9] = value
        return f"{emotion},{' '.join(values)},{usage}"

    return edit


def set_field(index, value):
    def edit(line):
        fields = line.split(",")
        fields[index] = value
        return ",".join(fields)

    return edit


CSV_CASES = {
    "pixel count": (drop_last_pixel, "expected 2304 space-separated pixels, got 2303"),
    "non-integer pixel": (set_pixel("12.5"), "pixel '12.5' is not an integer 0-255"),
    "word for a pixel": (set_pixel("abc"), "pixel 'abc' is not an integer 0-255"),
    "pixel above 255": (set_pixel("256"), "pixel 10 is 256, outside 0-255"),
    "negative pixel": (set_pixel("-3"), "pixel '-3' is not an integer 0-255"),
    "label 7": (set_field(0, "7"), "emotion '7' is not a label 0-6"),
    "label not a number": (set_field(0, "happy"), "emotion 'happy' is not a label 0-6"),
    "unknown Usage": (
        set_field(2, "Validation"),
        "unknown Usage 'Validation' (expected Training, PublicTest",
    ),
    "extra field": (lambda line: line + ",extra", "expected 3 comma-separated fields, got 4"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_row_names_file_and_line(tmp_path, rows, good_out, capsys, monkeypatch, case):
    edit, message = CSV_CASES[case]
    source = tmp_path / "fer2013.csv"
    source.write_text(with_line(csv_text(rows), 4, edit))
    code, _, err = run_cli(["prepare", source, "--out", good_out[0]], capsys, monkeypatch)
    assert_one_line_error(code, err, f"{source}: line 4: {message}")
    assert_intact(good_out)


def test_missing_column_names_line_1(tmp_path, rows, good_out, capsys, monkeypatch):
    source = tmp_path / "fer2013.csv"
    source.write_text("emotion,pixels\n" + "".join(f"{e},{p}\n" for e, p, _ in rows))
    code, _, err = run_cli(["prepare", source, "--out", good_out[0]], capsys, monkeypatch)
    assert_one_line_error(code, err, f"{source}: line 1: missing column 'Usage'")
    assert_intact(good_out)


def test_unreadable_image_names_the_file(tmp_path, rows, good_out, capsys, monkeypatch):
    source = write_image_folder(rows, tmp_path / "images")
    broken = sorted((source / "train").rglob("*.png"))[1]
    broken.write_bytes(b"not a png")
    code, _, err = run_cli(["prepare", source, "--out", good_out[0]], capsys, monkeypatch)
    relative = broken.relative_to(source).as_posix()
    assert_one_line_error(code, err, f"{source}/{relative}: unreadable image")
    assert_intact(good_out)


def test_mismatched_x_and_y_lengths(tmp_path, rows, good_out, capsys, monkeypatch):
    source, _ = write_npy_quartet(rows, tmp_path / "npy")
    np.save(source / "y_train.npy", np.load(source / "y_train.npy")[:-1])
    code, _, err = run_cli(["prepare", source, "--out", good_out[0]], capsys, monkeypatch)
    assert_one_line_error(code, err, f"{source}/X_train.npy: 2 images but {source}/y_train.npy has 1 labels")
    assert_intact(good_out)


@pytest.mark.parametrize(
    "array, values, message",
    [
        ("y_test.npy", np.array([3, 9]), "y_test.npy: index 1: label 9 is not an integer 0-6"),
        (
            "y_test.npy",
            np.array([[0, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0]]),
            "index 1: not a one-hot row",
        ),
        (
            "X_test.npy",
            np.full((2, 48, 48), 300, dtype=np.int64),
            "X_test.npy: index 0: pixel values must be",
        ),
    ],
)
def test_bad_npy_rows_name_the_index(tmp_path, rows, good_out, capsys, monkeypatch, array, values, message):
    source, _ = write_npy_quartet(rows, tmp_path / "npy")
    np.save(source / array, values)
    code, _, err = run_cli(["prepare", source, "--out", good_out[0]], capsys, monkeypatch)
    assert_one_line_error(code, err, message)
    assert_intact(good_out)


def test_x_without_y(tmp_path, rows, good_out, capsys, monkeypatch):
    source, _ = write_npy_quartet(rows, tmp_path / "npy")
    (source / "y_test.npy").unlink()
    code, _, err = run_cli(["prepare", source, "--out", good_out[0]], capsys, monkeypatch)
    assert_one_line_error(code, err, f"{source}/X_test.npy: no y_test.npy beside it")
    assert_intact(good_out)


def test_missing_source_says_where_to_get_fer2013(tmp_path, good_out, capsys, monkeypatch):
    code, _, err = run_cli(["prepare", tmp_path / "fer2013.csv", "--out", good_out[0]], capsys, monkeypatch)
    assert_one_line_error(code, err, "fer2013.csv: no such file or directory", "data/README.md")
    assert_intact(good_out)


def test_damaged_gzip(tmp_path, rows, good_out, capsys, monkeypatch):
    source = tmp_path / "fer2013.csv.gz"
    source.write_bytes(gzip.compress(csv_text(rows).encode())[:5000])
    code, _, err = run_cli(["prepare", source, "--out", good_out[0]], capsys, monkeypatch)
    assert_one_line_error(code, err, f"{source}: not a valid gzip file")
    assert_intact(good_out)


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path, rows, capsys, monkeypatch):
    source = write_csv(rows, tmp_path / "fer2013.csv")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    code, _, err = run_cli(["prepare", source, "--out", tmp_path / "mine"], capsys, monkeypatch)
    assert_one_line_error(code, err, "mine: not empty and not a `fertrain prepare` output")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_skip_bad_rows_reports_how_many_and_which(tmp_path, rows, good_out, capsys, monkeypatch):
    text = with_line(csv_text(rows), 3, set_field(0, "7"))
    source = tmp_path / "fer2013.csv"
    source.write_text(with_line(text, 6, drop_last_pixel))
    args = ["prepare", source, "--out", good_out[0], "--skip-bad-rows"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0
    assert "skipped 2 bad rows" in err
    assert f"{source}: line 3: emotion '7'" in err and f"{source}: line 6: expected 2304" in err
    manifest = load_manifest(good_out[0])
    assert manifest["skipped_rows"]["count"] == 2
    assert [r.split(": ")[1] for r in manifest["skipped_rows"]["rows"]] == ["line 3", "line 6"]
    assert [manifest["splits"][s]["count"] for s in ("train", "val", "test")] == [1, 2, 1]
    np.testing.assert_array_equal(load_split(good_out[0], "test")[1], [rows[5][0]])


def test_interrupted_write_leaves_the_old_directory(tmp_path, rows, good_out, monkeypatch):
    source = write_csv(rows, tmp_path / "fer2013.csv")
    calls = []
    real_savez = np.savez

    def savez_then_interrupt(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_savez(*args, **kwargs)

    monkeypatch.setattr("fertrain.data.prepare.np.savez", savez_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, good_out[0])
    assert len(calls) == 2
    assert_intact(good_out)


def test_bad_option_values(tmp_path, rows):
    source = write_csv(rows, tmp_path / "fer2013.csv")
    with pytest.raises(DataError, match=r"--val-fraction 1.5: expected a fraction in \[0, 1\)"):
        prepare(source, tmp_path / "out", val_fraction=1.5)
    with pytest.raises(DataError, match="--format npy expects a directory or an archive"):
        prepare(source, tmp_path / "out", fmt="npy")


def test_console_script_prints_one_line_and_no_traceback(tmp_path, rows):
    source = tmp_path / "fer2013.csv"
    source.write_text(with_line(csv_text(rows), 5, set_field(0, "9")))
    result = subprocess.run(
        [sys.executable, "-m", "fertrain", "prepare", str(source), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {source}: line 5: emotion '9' is not a label 0-6 (0 angry ... 6 neutral) "
        "(use --skip-bad-rows to skip such rows)"
    ]
    assert not (tmp_path / "out").exists()
