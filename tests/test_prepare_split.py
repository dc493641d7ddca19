"""The stratified validation carve: deterministic per seed, class proportions kept, order kept."""

from __future__ import annotations

import numpy as np
import pytest

from fertrain.data.prepare import stratified_split

# FER2013's Training class counts: disgust is 436 of 28,709.
TRAINING_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]


@pytest.fixture(scope="module")
def labels():
    return np.random.default_rng(0).permutation(np.repeat(np.arange(7), TRAINING_COUNTS)).astype(np.uint8)


def test_same_seed_same_split_other_seed_other_split(labels):
    kept, carved = stratified_split(labels, 0.1, seed=42)
    again_kept, again_carved = stratified_split(labels, 0.1, seed=42)
    np.testing.assert_array_equal(kept, again_kept)
    np.testing.assert_array_equal(carved, again_carved)
    assert not np.array_equal(carved, stratified_split(labels, 0.1, seed=43)[1])


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_each_class_keeps_its_proportion(labels, fraction):
    kept, carved = stratified_split(labels, fraction, seed=1)
    carved_counts = np.bincount(labels[carved], minlength=7)
    assert carved_counts.tolist() == [round(n * fraction) for n in TRAINING_COUNTS]
    assert np.bincount(labels[kept], minlength=7).tolist() == (TRAINING_COUNTS - carved_counts).tolist()
    np.testing.assert_allclose(
        carved_counts / carved_counts.sum(), np.array(TRAINING_COUNTS) / len(labels), atol=5e-4
    )


def test_partition_in_source_order(labels):
    kept, carved = stratified_split(labels, 0.1, seed=5)
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(carved) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, carved])), np.arange(len(labels)))


def test_zero_fraction_carves_nothing(labels):
    kept, carved = stratified_split(labels, 0.0, seed=5)
    assert len(carved) == 0 and len(kept) == len(labels)
