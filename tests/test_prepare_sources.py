"""Every source form `fertrain prepare` accepts gives the same arrays for the same rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_main import run_cli
from fer2013_forms import (
    expected_splits,
    first_rows_per_usage,
    sample_rows,
    write_competition_zip,
    write_csv,
    write_csv_gz,
    write_icml,
    write_image_folder,
    write_image_folder_zip,
    write_npy_quartet,
    write_tar_gz,
    write_zip,
)
from PIL import Image

from fertrain.data import load_manifest, load_split
from fertrain.data.prepare import prepare, stratified_split
from fertrain.data.sources import sha256_of


@pytest.fixture(scope="module")
def rows(sample_csv):
    return sample_rows(sample_csv)


@pytest.fixture(scope="module")
def expected(rows):
    return expected_splits(rows)


@pytest.fixture(scope="module")
def few_rows(rows):
    """10 rows of each split: enough to show order and labels survive, quick to write as images."""
    return first_rows_per_usage(rows, 10)


def assert_prepared_equals(out, expected):
    manifest = load_manifest(out)
    for split, (images, labels) in expected.items():
        got_images, got_labels = load_split(out, split)
        np.testing.assert_array_equal(got_images, images, err_msg=split)
        np.testing.assert_array_equal(got_labels, labels, err_msg=split)
        assert manifest["splits"][split]["count"] == len(labels)
        assert (
            list(manifest["splits"][split]["class_counts"].values())
            == np.bincount(labels, minlength=7).tolist()
        )


def test_sample_prepares_to_the_rows_read_one_pixel_at_a_time(prepared_sample, expected):
    assert [len(expected[s][1]) for s in ("train", "val", "test")] == [700, 196, 196]
    assert_prepared_equals(prepared_sample, expected)


@pytest.mark.parametrize(
    "writer, name, layout",
    [
        (write_csv, "fer2013.csv", "fer2013.csv"),
        (write_icml, "icml_face_data.csv", "icml_face_data.csv"),
        (write_csv_gz, "fer2013.csv.gz", "fer2013.csv"),
        (write_tar_gz, "fer2013.tar.gz", "fer2013.csv"),
        (write_zip, "fer2013.zip", "fer2013.csv"),
        (write_competition_zip, "challenge.zip", "fer2013.csv"),
    ],
)
def test_csv_forms_give_identical_arrays(tmp_path, rows, expected, writer, name, layout):
    source = writer(rows, tmp_path / name)
    manifest = prepare(source, tmp_path / "out")
    assert_prepared_equals(tmp_path / "out", expected)
    assert manifest["source"]["format"] == "csv"
    assert manifest["source"]["layout"].startswith(layout)
    assert manifest["source"]["name"] == name
    assert manifest["source"]["sha256"] == sha256_of(source)
    assert manifest["val_split"] == {"origin": "source"}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


@pytest.mark.parametrize(
    "writer, name", [(write_image_folder, "images"), (write_image_folder_zip, "archive.zip")]
)
def test_image_folder_gives_identical_arrays(tmp_path, few_rows, writer, name):
    source = writer(few_rows, tmp_path / name)
    manifest = prepare(source, tmp_path / "out")
    assert_prepared_equals(tmp_path / "out", expected_splits(few_rows))
    assert manifest["source"]["format"] == "image-folder"


def test_image_folder_converts_any_size_and_colour_to_48_gray(tmp_path, few_rows):
    source = write_image_folder(few_rows, tmp_path / "images")
    prepare(source, tmp_path / "reference")
    reference = load_split(tmp_path / "reference", "train")
    for path in sorted((source / "train").rglob("*.png")):
        gray = Image.open(path)
        # An RGB, 96x120 JPEG-free version: twice the size, with a 12-pixel border above and below.
        big = gray.resize((96, 96), Image.Resampling.NEAREST).convert("RGB")
        framed = Image.new("RGB", (96, 120), (255, 0, 0))
        framed.paste(big, (0, 12))
        framed.save(path)
    prepare(source, tmp_path / "out")
    images, labels = load_split(tmp_path / "out", "train")
    assert images.shape == reference[0].shape and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, reference[1])
    difference = np.abs(images.astype(int) - reference[0].astype(int))
    assert difference.mean() < 2.0


@pytest.mark.parametrize(
    "image_form, label_form", [("uint8", "int"), ("float01", "onehot"), ("float255", "float")]
)
def test_npy_quartet_gives_identical_arrays(tmp_path, rows, image_form, label_form):
    source, expected = write_npy_quartet(rows, tmp_path / "npy", image_form, label_form)
    manifest = prepare(source, tmp_path / "out", val_fraction=0.0)
    assert_prepared_equals(tmp_path / "out", expected)
    assert manifest["source"]["format"] == "npy"
    assert manifest["splits"]["val"]["present"] is False
    assert not (tmp_path / "out" / "val.npz").exists()
    assert manifest["val_split"] == {"origin": "none"}


def test_source_without_val_gets_a_stratified_carve(tmp_path, rows):
    source, expected = write_npy_quartet(rows, tmp_path / "npy")
    manifest = prepare(source, tmp_path / "out", val_fraction=0.2, seed=7)
    images, labels = expected["train"]
    kept, carved = stratified_split(labels, 0.2, seed=7)
    assert_prepared_equals(
        tmp_path / "out",
        {
            "train": (images[kept], labels[kept]),
            "val": (images[carved], labels[carved]),
            "test": expected["test"],
        },
    )
    assert manifest["splits"]["val"]["class_counts"] == {e: 20 for e in manifest["classes"]}
    assert manifest["val_split"] == {"origin": "carved from train", "fraction": 0.2, "seed": 7}


def test_csv_without_some_splits_records_them_missing(tmp_path, rows):
    only_training = [row for row in rows if row[2] == "Training"]
    manifest = prepare(write_csv(only_training, tmp_path / "train.csv"), tmp_path / "out", val_fraction=0.1)
    assert manifest["splits"]["test"] == {
        "present": False,
        "file": None,
        "count": 0,
        "class_counts": {e: 0 for e in manifest["classes"]},
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "train.npz", "val.npz"]
    assert manifest["splits"]["train"]["count"] == 630 and manifest["splits"]["val"]["count"] == 70


def test_format_option_overrides_detection(tmp_path, rows):
    source = write_csv(rows, tmp_path / "faces.txt")
    assert prepare(source, tmp_path / "out", fmt="csv")["splits"]["train"]["count"] == 700


def test_cli_prints_class_count_table_or_json(tmp_path, sample_csv, capsys, monkeypatch):
    code, out, err = run_cli(["prepare", sample_csv, "--out", tmp_path / "table"], capsys, monkeypatch)
    assert code == 0 and err == ""
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["train"] == ["700"] + ["100"] * 7
    assert lines["val"] == lines["test"] == ["196"] + ["28"] * 7

    code, out, _ = run_cli(["prepare", sample_csv, "--out", tmp_path / "json", "--json"], capsys, monkeypatch)
    assert code == 0
    assert json.loads(out) == load_manifest(tmp_path / "json")
