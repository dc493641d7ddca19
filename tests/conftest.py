"""Shared fixtures: the bundled FER2013 sample, raw and prepared."""

from __future__ import annotations

from pathlib import Path

import pytest

from fertrain.data.prepare import prepare

SAMPLE_CSV = Path(__file__).resolve().parents[1] / "data" / "sample" / "fer2013_sample.csv.gz"


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    """data/sample/fer2013_sample.csv.gz: 700 Training, 196 PublicTest and 196 PrivateTest rows.

    The PrivateTest rows are PublicTest faces relabelled (see data/README.md)."""
    return SAMPLE_CSV


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample prepared once per session: train.npz (700), val.npz (196), test.npz (196)."""
    out = tmp_path_factory.mktemp("prepared") / "sample"
    prepare(SAMPLE_CSV, out)
    return out
