"""The real FER2013 CSV (../shared/data/, not in the repository): counts match its README."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fertrain.data import load_split
from fertrain.data.prepare import prepare

REAL_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013_training_publictest.csv.gz"
# From ../shared/data/README.md: angry, disgust, fear, happy, sad, surprise, neutral.
TRAINING_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]
PUBLIC_TEST_COUNTS = [467, 56, 496, 895, 653, 415, 607]
UNCOMPRESSED_SHA256 = "57dc57ef1a9cbc17a88ef70d174616cc7d8bef0068245d3a9115a2c62ca00237"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CSV.is_file(), reason=f"{REAL_CSV} not present")
def test_real_csv_counts(tmp_path):
    manifest = prepare(REAL_CSV, tmp_path / "fer2013")
    splits = manifest["splits"]
    assert splits["train"]["count"] == 28709 and splits["val"]["count"] == 3589
    assert list(splits["train"]["class_counts"].values()) == TRAINING_COUNTS
    assert list(splits["val"]["class_counts"].values()) == PUBLIC_TEST_COUNTS
    assert splits["test"]["present"] is False
    assert manifest["val_split"] == {"origin": "source"}
    images, labels = load_split(tmp_path / "fer2013", "val")
    assert images.shape == (3589, 48, 48) and images.dtype == np.uint8
    # The README's first rows: the first Training row begins 70 80 82 72 with label 0.
    train_images, train_labels = load_split(tmp_path / "fer2013", "train")
    assert train_images[0, 0, :4].tolist() == [70, 80, 82, 72] and train_labels[0] == 0
