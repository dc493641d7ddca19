"""The accuracy techniques: mixup/CutMix label math, random-crop training with ten-crop testing,
the exponential moving average of the weights, the L2 scope, zoom ranges, brightness and contrast."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fertrain.models  # noqa: F401  (registers fertrain's layers for load_model)
from fertrain.config import AugmentConfig, ModelConfig, load_config
from fertrain.errors import ConfigError
from fertrain.inference import load_classifier, predict_probabilities, tta_views
from fertrain.models import build_model
from fertrain.training.augmentation import BatchMixer, build_augmentation
from fertrain.training.batches import ArrayBatches
from fertrain.training.callbacks import AveragedWeightsForEvaluation
from fertrain.training.schedules import build_optimizer

BATCH = 64


def identity_batch(seed: int = 0):
    """Distinct random images, each of its own class: a soft label then names the partner and the share."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (BATCH, 48, 48, 1), dtype=np.uint8)
    return images, np.eye(BATCH, dtype=np.float32)


def own_share_and_partner(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    own = labels[np.arange(BATCH), np.arange(BATCH)]
    others = labels.copy()
    others[np.arange(BATCH), np.arange(BATCH)] = 0
    return own, others.argmax(axis=1)


def test_mixup_blends_each_image_with_its_partner_by_the_labels_share():
    images, labels = identity_batch()
    mixed, soft = BatchMixer(mixup_alpha=0.4, cutmix_alpha=0.0)(np.random.default_rng(1), images, labels)
    assert mixed.dtype == np.float32 and mixed.shape == images.shape
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    assert (soft >= 0).all()
    own, partner = own_share_and_partner(soft)
    pairs = own < 1.0
    assert pairs.mean() > 0.9  # every image is mixed (a partner can be itself, rarely)
    pixels = images.astype(np.float32)
    expected = own[:, None, None, None] * pixels + (1 - own[:, None, None, None]) * pixels[partner]
    np.testing.assert_allclose(mixed[pairs], expected[pairs], atol=1e-3)
    # Beta(0.4, 0.4) is symmetric around 0.5 and piles up near 0 and 1
    assert 0.35 < own.mean() < 0.65 and ((own < 0.1) | (own > 0.9)).mean() > 0.3


def test_cutmix_pastes_a_box_whose_area_is_the_partners_label_share():
    images, labels = identity_batch(2)
    mixed, soft = BatchMixer(mixup_alpha=0.0, cutmix_alpha=1.0)(np.random.default_rng(3), images, labels)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    own, partner = own_share_and_partner(soft)
    checked = 0
    for i in np.flatnonzero(own < 1.0):
        from_own = mixed[i, ..., 0] == images[i, ..., 0]
        from_partner = mixed[i, ..., 0] == images[partner[i], ..., 0]
        assert (from_own | from_partner).all()  # every pixel is one face's or the other's
        pasted = ~from_own
        rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
        # the pasted pixels form one rectangle, and its area is the partner's share of the label
        box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        same = images[i, ..., 0] == images[partner[i], ..., 0]  # a pasted pixel may equal the own one
        assert (pasted | same)[box].all()
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) / 48**2
        assert soft[i, partner[i]] == pytest.approx(box_area, abs=1e-6)
        checked += 1
    assert checked > BATCH / 2


def test_mixing_probability_both_methods_and_class_weights():
    images, labels = identity_batch(4)
    weights = np.linspace(0.5, 2.0, BATCH).astype(np.float32)
    mixer = BatchMixer(mixup_alpha=1.0, cutmix_alpha=1.0, probability=0.5)
    mixed, soft, mixed_weights = mixer(np.random.default_rng(5), images, labels, weights)
    own, partner = own_share_and_partner(soft)
    untouched = own == 1.0
    assert 0.25 < untouched.mean() < 0.75
    np.testing.assert_array_equal(mixed[untouched], images[untouched].astype(np.float32))
    np.testing.assert_allclose(mixed_weights, own * weights + (1 - own) * weights[partner], atol=1e-6)
    blended = ~untouched & ~np.all(
        (mixed == images) | (mixed == images[partner]), axis=(1, 2, 3)
    )  # mixup: pixels between the two faces; CutMix: each pixel one face's
    assert 0 < blended.sum() < (~untouched).sum()
    assert BatchMixer.from_config(AugmentConfig()) is None
    assert BatchMixer.from_config(AugmentConfig(mixup_alpha=0.2, mix_probability=0.0)) is None


def test_mixed_batches_depend_only_on_seed_epoch_and_index():
    images, labels = identity_batch(6)

    def batches(seed):
        return ArrayBatches(
            images[..., 0], np.arange(BATCH) % 7, 7, 16, shuffle_seed=seed, mixer=BatchMixer(0.4, 1.0)
        )

    first, again, other_seed = batches(1), batches(1), batches(2)
    np.testing.assert_array_equal(first[2][0], again[2][0])
    np.testing.assert_array_equal(first[2][1], again[2][1])
    assert not np.array_equal(first[2][0], other_seed[2][0])
    before = first[2][0].copy()
    first.set_epoch(1)
    assert not np.array_equal(first[2][0], before)
    np.testing.assert_allclose(first[2][1].sum(axis=1), 1.0, atol=1e-6)


def test_ten_crop_views_put_the_four_corner_crops_and_the_centre_under_the_networks_crop():
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    crop = keras.layers.CenterCrop(40, 40)
    seen = [
        keras.ops.convert_to_numpy(crop(view[..., None].astype("float32")))[..., 0]
        for view in tta_views(faces, "ten_crop", 4)
    ]
    corners = [
        faces[:, 4:44, 4:44],
        faces[:, :40, :40],
        faces[:, :40, 8:],
        faces[:, 8:, :40],
        faces[:, 8:, 8:],
    ]
    expected = corners + [corner[:, :, ::-1] for corner in corners]
    assert len(seen) == 10
    for got, want in zip(seen, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_crop_trained_model_tests_on_its_centre_crop_and_reports_its_margin(tmp_path):
    config = ModelConfig(width_multiplier=0.25, entry_widths=[16, 32], crop_size=40, resize_to=44)
    assert config.stem_input_size == 44
    model = build_model(config)
    assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, 7)
    path = tmp_path / "crop.keras"
    model.save(path)
    loaded = load_classifier(path)
    assert (loaded.input_size, loaded.crop_margin, loaded.tta_shift) == (48, 4, 4)
    faces = np.random.default_rng(1).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    # pixels outside the centre 40x40 never reach the network
    framed = faces.copy()
    framed[:, :4], framed[:, -4:], framed[:, :, :4], framed[:, :, -4:] = 0, 255, 0, 255
    np.testing.assert_allclose(
        predict_probabilities([loaded], faces), predict_probabilities([loaded], framed), atol=1e-6
    )
    views = tta_views(faces, "ten_crop", 4)
    direct = np.mean([model.predict(v[..., None].astype("float32"), verbose=0) for v in views], axis=0)
    np.testing.assert_allclose(predict_probabilities([loaded], faces, tta="ten_crop"), direct, atol=1e-5)


def test_averaged_weights_are_validated_and_saved_while_training_continues_from_its_own():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype("float32"), np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    optimizer = keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.8)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")

    class Watch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.at_epoch_end, self.averages, self.val_losses, self.at_epoch_begin = [], [], [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.at_epoch_begin.append([w.copy() for w in self.model.get_weights()])

        def on_epoch_end(self, epoch, logs=None):
            weights = self.model.get_weights()
            self.at_epoch_end.append(weights)
            self.averages.append(
                [keras.ops.convert_to_numpy(v) for v in optimizer._model_variables_moving_average]
            )
            probabilities = np.asarray(self.model(x))
            self.val_losses.append(
                (logs["val_loss"], float(-np.mean(np.sum(y * np.log(probabilities), axis=1))))
            )

    watch = Watch()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        validation_data=(x, y),
        callbacks=[watch, AveragedWeightsForEvaluation()],
        verbose=0,
    )
    for weights, averages in zip(watch.at_epoch_end, watch.averages, strict=True):
        for w, a in zip(weights, averages, strict=True):
            np.testing.assert_allclose(w, a, atol=1e-6)  # what a checkpoint callback saves
    for logged, recomputed in watch.val_losses:
        assert logged == pytest.approx(recomputed, rel=1e-4)  # validation ran on the averages
    # the second epoch trained on from the training weights, which differ from the averages
    assert not np.allclose(watch.at_epoch_begin[1][0], watch.averages[0][0])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_weight_average_ramps_its_momentum_up_to_train_ema(name):
    train = load_config(None, [f"train.optimizer.name={name}", "train.ema=0.9"]).train
    optimizer = build_optimizer(train, 0.1)
    variable = keras.Variable(np.array([1.0, -2.0], dtype="float32"))
    optimizer.build([variable])
    average = np.zeros(2)
    gradients = np.random.default_rng(0).normal(size=(100, 2)).astype("float32")
    for t, gradient in enumerate(gradients):  # t: 0-based update
        optimizer.apply([gradient], [variable])
        kept = min(0.9, t / (t + 9))  # 0, 0.1, 0.18, ..., 0.9 from update 81 on
        average = kept * average + (1 - kept) * keras.ops.convert_to_numpy(variable)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0]), average, rtol=1e-5
        )


def test_l2_scope_stem_regularizes_only_the_stem_convs():
    def penalties(scope: str) -> int:
        model = build_model(ModelConfig(l2=0.01, l2_scope=scope))
        return len(model.losses)

    assert penalties("stem") == 2  # the two 3x3 stem convs
    assert (
        penalties("all") == 2 + 4 * (1 + 2 * 2) + 1
    )  # + per entry block: shortcut, 2 x (depthwise, pointwise); head


def test_crop_zoom_brightness_and_contrast_settings(tmp_path):
    config = load_config(None, ["model.crop_size=40", "data.augment.zoom=[-0.2, 0.1]"])
    assert config.model.crop_size == 40 and config.data.augment.zoom == (-0.2, 0.1)
    for bad, message in (
        ("model.crop_size=41", "even margin"),
        ("model.crop_size=56", "between 8 and input_size"),
        ("data.augment.zoom=[0.3, 0.1]", "range"),
        ("data.augment.zoom=-0.2", "fraction"),
        ("train.ema=1.0", "must be < 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])
    augment = AugmentConfig(brightness=0.2, contrast=0.3, zoom=(-0.2, 0.1), rotation_degrees=0, shift=0)
    layers = build_augmentation(augment, 48, seed=0).layers
    names = [type(layer).__name__ for layer in layers]
    assert names == ["RandomFlip", "RandomZoom", "RandomBrightness", "RandomContrast"]
    assert layers[1].height_factor == (-0.2, 0.1)
    images = np.full((64, 48, 48, 1), 100.0, dtype="float32")
    brighter = keras.ops.convert_to_numpy(layers[2](images, training=True))
    shifts = brighter[:, 0, 0, 0] - 100.0
    assert np.abs(shifts).max() <= 0.2 * 255 + 1e-3 and shifts.std() > 5  # uniform in +-51
