"""`fertrain prepare` on image folders of any classes: class names and their order, splits, any
size/colour/format, `--detect-faces`, and every bad-input case (one line, exit 2, or skipped and
listed with `--skip-bad-rows`)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_main import run_cli
from PIL import Image

from fertrain.data import load_split
from fertrain.data.dataset import FER2013_CLASSES
from fertrain.data.prepare import prepare
from fertrain.errors import DataError

ASTRONAUT = Path(__file__).resolve().parents[1] / "data" / "sample" / "astronaut.jpg"


def gray_of(rgb: tuple[int, int, int]) -> int:
    """PIL's ITU-R 601-2 luma, rounded as PIL rounds it."""
    r, g, b = rgb
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def write_faces(folder: Path, values: list[int], suffix: str = ".png", size=(48, 48)) -> None:
    """One uniform gray image per value, named 0.png, 1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, value in enumerate(values):
        Image.new("L", size, value).save(folder / f"{index}{suffix}")


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_class_folders_of_any_names_any_size_colour_and_format(tmp_path):
    source = tmp_path / "mine"
    write_faces(source / "not_happy", [10, 20, 30, 40])
    write_faces(source / "happy", [200, 210, 220, 230], suffix=".bmp", size=(100, 60))
    zebra = source / "Zebra"
    zebra.mkdir()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (90, 160, 30)]
    # RGB JPEG (uniform, so lossless enough), RGBA PNG, palette GIF, RGB TIFF; sizes differ too
    for index, (colour, (name, mode)) in enumerate(
        zip(colours, [("a.jpg", "RGB"), ("b.png", "RGBA"), ("c.gif", "P"), ("d.tif", "RGB")], strict=True)
    ):
        Image.new("RGB", (64 + index, 80), colour).convert(mode).save(zebra / name)
    manifest = prepare(source, tmp_path / "out", val_fraction=0.25, seed=0)
    # Sorted as Python sorts strings: capitals first.
    assert manifest["classes"] == ["Zebra", "happy", "not_happy"]
    assert manifest["source"]["layout"] == "<class>/* images"
    assert manifest["val_split"]["origin"] == "carved from train"
    counts = {split: manifest["splits"][split]["class_counts"] for split in ("train", "val")}
    assert counts == {
        "train": {"Zebra": 3, "happy": 3, "not_happy": 3},
        "val": {"Zebra": 1, "happy": 1, "not_happy": 1},
    }
    images, labels = (
        np.concatenate(parts)
        for parts in zip(*(load_split(tmp_path / "out", s) for s in ("train", "val")), strict=True)
    )
    assert images.shape == (12, 48, 48)
    # Every image is uniform, so its one gray value tells which file it was.
    values = sorted((int(label), int(image[24, 24])) for image, label in zip(images, labels, strict=True))
    assert all((image == image[0, 0]).all() for image in images)
    zebra_grays = sorted(gray_of(c) for c in colours)
    assert values == sorted(
        [(0, v) for v in zebra_grays]
        + [(1, v) for v in (200, 210, 220, 230)]
        + [(2, v) for v in (10, 20, 30, 40)]
    )


def test_classes_option_orders_the_labels(tmp_path, capsys, monkeypatch):
    source = tmp_path / "mine"
    write_faces(source / "a", [1, 2])
    write_faces(source / "b", [3, 4])
    write_faces(source / "c", [5, 6])
    code, out, err = run_cli(
        ["prepare", source, "--out", tmp_path / "out", "--classes", "c, a,b", "--val-fraction", "0"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["classes"] == ["c", "a", "b"]
    images, labels = load_split(tmp_path / "out", "train")
    assert dict(zip(images[:, 0, 0].tolist(), labels.tolist(), strict=True)) == {
        5: 0,
        6: 0,
        1: 1,
        2: 1,
        3: 2,
        4: 2,
    }
    assert "c" in out and "a" in out  # the table's columns name the classes


def test_train_val_test_folders_keep_their_splits(tmp_path):
    source = tmp_path / "mine"
    for split, base in (("train", 0), ("val", 100), ("test", 200)):
        write_faces(source / split / "no", [base + 1, base + 2])
        write_faces(source / split / "yes", [base + 3])
    manifest = prepare(source, tmp_path / "out")
    assert manifest["classes"] == ["no", "yes"]
    assert manifest["source"]["layout"] == "train|val|test/<class>/* images"
    assert manifest["val_split"] == {"origin": "source"}
    for split, base in (("train", 0), ("val", 100), ("test", 200)):
        images, labels = load_split(tmp_path / "out", split)
        assert images[:, 0, 0].tolist() == [base + 1, base + 2, base + 3] and labels.tolist() == [0, 0, 1]


def test_emotion_folders_keep_fer2013s_classes_and_order(tmp_path):
    """Kaggle's aliases map to FER2013's labels; the class list stays FER2013's 7 in its order,
    and the file prefixes keep their splits."""
    source = tmp_path / "kaggle"
    write_faces(source / "train" / "happiness", [1])
    write_faces(source / "train" / "anger", [2])
    write_faces(source / "test" / "Neutral", [3])
    (source / "test" / "Neutral" / "0.png").rename(source / "test" / "Neutral" / "PublicTest_7.png")
    manifest = prepare(source, tmp_path / "out")
    assert manifest["classes"] == list(FER2013_CLASSES)
    assert manifest["source"]["layout"] == "train/<emotion>/*, test/<emotion>/* images"
    images, labels = load_split(tmp_path / "out", "train")
    assert dict(zip(images[:, 0, 0].tolist(), labels.tolist(), strict=True)) == {1: 3, 2: 0}
    val = load_split(tmp_path / "out", "val")
    assert val[0][:, 0, 0].tolist() == [3] and val[1].tolist() == [6]
    # Naming the classes makes the same folders a dataset of their own.
    manifest = prepare(
        source, tmp_path / "own", classes=["happiness", "anger", "Neutral"], skip_bad_rows=True
    )
    assert manifest["classes"] == ["happiness", "anger", "Neutral"]


def test_a_folder_that_is_no_emotion_makes_all_of_them_classes(tmp_path):
    source = tmp_path / "kaggle"
    write_faces(source / "train" / "happy", [1])
    write_faces(source / "train" / "joyful", [2])
    manifest = prepare(source, tmp_path / "out")
    assert manifest["classes"] == ["happy", "joyful"]


def test_a_zipped_folder_of_class_folders(tmp_path):
    folder = tmp_path / "pets"
    write_faces(folder / "cat", [1, 2])
    write_faces(folder / "dog", [3, 4])
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in sorted(folder.rglob("*.png")):
            zipped.write(file, file.relative_to(tmp_path).as_posix())
    manifest = prepare(archive, tmp_path / "out", val_fraction=0)
    assert manifest["classes"] == ["cat", "dog"]
    images, labels = load_split(tmp_path / "out", "train")
    assert images[:, 0, 0].tolist() == [1, 2, 3, 4] and labels.tolist() == [0, 0, 1, 1]


def test_detect_faces_crops_the_face_and_counts_photos_without_one(tmp_path, capsys, monkeypatch):
    astronaut = Image.open(ASTRONAUT).convert("RGB")
    source = tmp_path / "photos"
    (source / "face").mkdir(parents=True)
    (source / "none").mkdir()
    # The portrait on a large grey canvas, away from its centre: cropping the centre would miss it.
    canvas = Image.new("RGB", (640, 480), (128, 128, 128))
    canvas.paste(astronaut, (300, 120))
    canvas.save(source / "face" / "photo.png")
    Image.new("RGB", (300, 200), (30, 60, 90)).save(source / "none" / "wall.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (240, 320), dtype=np.uint8)).save(source / "none" / "noise.png")
    code, out, err = run_cli(
        ["prepare", source, "--out", tmp_path / "out", "--detect-faces", "--val-fraction", "0"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "faces: found in 1 of 3 images; 2 without one" in out
    detection = json.loads((tmp_path / "out" / "manifest.json").read_text())["face_detection"]
    assert detection == {
        "images": 3,
        "no_face": 2,
        "no_face_images": [f"{source}/none/noise.png", f"{source}/none/wall.png"],
    }
    images, labels = load_split(tmp_path / "out", "train")
    face = images[labels == 0][0].astype(float)
    # The astronaut's face as the cascade boxes it in the portrait alone: (113, 66, 95, 95).
    reference = np.asarray(
        astronaut.convert("L").crop((113, 66, 208, 161)).resize((48, 48), Image.Resampling.LANCZOS), float
    )
    assert np.corrcoef(face.ravel(), reference.ravel())[0, 1] > 0.9
    assert images[labels == 1][1].std() == 0  # the wall, kept whole
    # Without detection the photo is its centre square, mostly canvas.
    prepare(source, tmp_path / "whole", val_fraction=0)
    whole = load_split(tmp_path / "whole", "train")[0][0].astype(float)
    assert np.corrcoef(whole.ravel(), reference.ravel())[0, 1] < 0.5


@pytest.fixture
def three_classes(tmp_path) -> Path:
    source = tmp_path / "mine"
    for split in ("train", "test"):
        for name, value in (("a", 1), ("b", 2), ("c", 3)):
            write_faces(source / split / name, [value, value])
    return source


@pytest.mark.parametrize(
    "damage, message, skipped",
    [
        (
            lambda s: (s / "train" / "b" / "1.png").write_bytes(b"no image"),
            "mine/train/b/1.png: unreadable image",
            "train/b/1.png",
        ),
        (
            lambda s: [p.unlink() for p in (s / "test" / "c").iterdir()],
            "mine/test/c: empty class folder",
            "test/c",
        ),
        (
            lambda s: [p.unlink() for p in (s / "test" / "c").iterdir()] and (s / "test" / "c").rmdir(),
            "mine/test: no folder for class 'c'",
            "mine/test:",
        ),
        (
            lambda s: (s / "train" / "notes.txt").write_text("x"),
            "mine/train/notes.txt: a file where class folders",
            "notes.txt",
        ),
    ],
)
def test_bad_folders_are_one_line_or_skipped_and_listed(
    three_classes, tmp_path, capsys, monkeypatch, damage, message, skipped
):
    damage(three_classes)
    out = tmp_path / "out"
    code, _, err = run_cli(["prepare", three_classes, "--out", out], capsys, monkeypatch)
    one_line_error(code, err, message, "--skip-bad-rows")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    code, _, err = run_cli(["prepare", three_classes, "--out", out, "--skip-bad-rows"], capsys, monkeypatch)
    assert code == 0, err
    assert "skipped 1 bad rows" in err and skipped in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["a", "b", "c"]
    assert manifest["skipped_rows"]["count"] == 1 and skipped in manifest["skipped_rows"]["rows"][0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "a,b,x"], "mine: no folder for class 'x' of --classes (folders: a, b, c)"),
        (["--classes", "a,b,a"], "--classes a,b,a: expected distinct, non-empty class names"),
        (["--classes", "a,b"], "mine/train/c: class folder not in --classes a,b"),
    ],
)
def test_bad_class_lists_are_one_line_errors(three_classes, tmp_path, capsys, monkeypatch, args, message):
    code, _, err = run_cli(["prepare", three_classes, "--out", tmp_path / "out", *args], capsys, monkeypatch)
    one_line_error(code, err, message)


def test_a_subset_of_classes_with_skip_bad_rows_leaves_the_others_out(three_classes, tmp_path):
    manifest = prepare(three_classes, tmp_path / "out", classes=["c", "a"], skip_bad_rows=True)
    assert manifest["classes"] == ["c", "a"] and manifest["skipped_rows"]["count"] == 2
    images, labels = load_split(tmp_path / "out", "test")
    assert images[:, 0, 0].tolist() == [3, 3, 1, 1] and labels.tolist() == [0, 0, 1, 1]


def test_one_class_folder_or_options_on_a_csv_are_refused(tmp_path, sample_csv):
    write_faces(tmp_path / "one" / "only", [1, 2])
    with pytest.raises(DataError, match="found 1 class folder"):
        prepare(tmp_path / "one", tmp_path / "out")
    with pytest.raises(DataError, match="--classes and --detect-faces apply to image folders"):
        prepare(sample_csv, tmp_path / "out", detect_faces=True)
