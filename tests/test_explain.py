"""Grad-CAM: a constructed network that looks at one known region only, ensembles weighted by their
members' probabilities, every network fertrain builds, the heat overlay's geometry on a photo with a
known face box, and bad input (no convolution, an unknown class, nothing to explain) in one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from boxes import iou
from cli_main import run_cli
from PIL import Image

from fertrain.config import load_config
from fertrain.errors import ModelError
from fertrain.explain import OVERLAY_OPACITY, GradCam, class_maps, heat_overlay
from fertrain.inference import LoadedModel, load_classifier
from fertrain.models import build_model
from fertrain.models.class_names import with_class_names
from fertrain.models.ensemble import average_ensemble
from fertrain.predict import BUNDLED_MODEL, predict_images

CLASSES = ("region", "elsewhere")
# The rows and columns the constructed networks read: a 16x16 square of the 48x48 face.
TOP_LEFT = (8, 24)
BOTTOM_LEFT = (28, 4)
SIDE = 16
# How far a map may bleed past the region at 48x48: the 3x3 conv's one pixel, the 2x2 pooling and the
# bilinear upsampling from 24x24.
BLEED = 4
DEMO_PHOTO = Path(__file__).resolve().parents[1] / "data" / "sample" / "astronaut.jpg"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _region_network(corner: tuple[int, int], confidence: float, name: str) -> keras.Model:
    """A network whose answer depends on the SIDE x SIDE square at `corner` only: the rest of the face
    is cropped off and zero-padded back before the one convolution, so its map is 0 outside the square.
    Bright pixels there raise `region`'s logit (by `confidence` per unit of mean activation) and lower
    `elsewhere`'s."""
    top, left = corner
    margins = ((top, 48 - top - SIDE), (left, 48 - left - SIDE))
    inputs = keras.Input((48, 48, 1), name="pixels")
    x = keras.layers.Cropping2D(margins)(inputs)
    x = keras.layers.ZeroPadding2D(margins)(x)
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
    x = keras.layers.MaxPooling2D(2, name="pool")(conv(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(2, name="logits")
    x = keras.layers.Activation("softmax", name="predictions")(dense(x))
    model = keras.Model(inputs, with_class_names(x, CLASSES), name=name)
    conv.set_weights([np.full((3, 3, 1, 4), 1 / 9 / 255, "float32"), np.zeros(4, "float32")])
    dense.set_weights(
        [np.tile([[confidence, -confidence]], (4, 1)).astype("float32"), np.zeros(2, "float32")]
    )
    return model


def _loaded(model: keras.Model, path: Path) -> LoadedModel:
    """The model as fertrain loads it, through a saved .keras file."""
    model.save(path)
    return load_classifier(path)


def _mass_in(maps: np.ndarray, corner: tuple[int, int], margin: int = 0) -> np.ndarray:
    top, left = corner
    rows = slice(max(0, top - margin), top + SIDE + margin)
    cols = slice(max(0, left - margin), left + SIDE + margin)
    return maps[:, rows, cols].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)


def test_the_map_falls_on_the_one_region_the_answer_depends_on(faces, tmp_path):
    model = _loaded(_region_network(TOP_LEFT, 5.0, "top_left"), tmp_path / "region.keras")
    explainer = GradCam(model)
    assert explainer.layers == ("pool",)  # the last map with a spatial extent, after the conv
    maps = explainer.face_maps(faces, [0] * len(faces))
    assert maps.shape == (5, 48, 48) and maps.max() == pytest.approx(1.0) and maps.min() >= 0
    np.testing.assert_allclose(_mass_in(maps, TOP_LEFT, BLEED), 1.0, atol=1e-6)  # nothing anywhere else
    assert np.all(_mass_in(maps, TOP_LEFT) > 0.75)
    # `elsewhere` only loses from what the region shows: no positive evidence for it anywhere.
    assert np.all(explainer.face_maps(faces, [1] * len(faces)) == 0)


def test_an_ensemble_averages_its_members_maps_weighted_by_their_probabilities(faces, tmp_path):
    confident, doubtful = (
        _region_network(TOP_LEFT, 8.0, "top_left"),
        _region_network(BOTTOM_LEFT, 1.0, "bottom"),
    )
    members = [_loaded(network, tmp_path / f"{network.name}.keras") for network in (confident, doubtful)]
    ensemble = _loaded(average_ensemble([confident, doubtful]), tmp_path / "ensemble.keras")
    explainer = GradCam(ensemble)
    assert explainer.layers == ("member1_top_left/pool", "member2_bottom/pool")

    maps = explainer.face_maps(faces, [0] * len(faces))
    weights = [member.forward(faces[..., None].astype("float32"))[:, 0] for member in members]
    assert np.all(weights[0] > 0.85) and np.all(weights[1] < 0.7)
    member_maps = [GradCam(member).face_maps(faces, [0] * len(faces)) for member in members]
    mixed = (
        sum(w[:, None, None] * m for w, m in zip(weights, member_maps, strict=True))
        / sum(weights)[:, None, None]
    )
    expected = mixed / mixed.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    # The more confident member's region holds the larger share of the map.
    assert np.all(_mass_in(maps, TOP_LEFT, BLEED) > _mass_in(maps, BOTTOM_LEFT, BLEED))


@pytest.mark.parametrize(
    "config, overrides, layer",
    [
        ("quickstart", [], "head_conv"),
        ("mini_xception", ["model.squeeze_excite=0.25"], "head_conv"),
        ("mini_xception", ["model.resize_to=64"], "head_conv"),
        ("fer2013_cpu", [], "head_conv"),  # a 40x40 centre crop
        ("xception", ["model.width_multiplier=0.125"], "exit2_bn"),  # a dense head
        ("fer2013_gpu", ["model.width_multiplier=0.125"], "exit2_bn"),
    ],
)
def test_every_network_fertrain_builds_is_explained_at_its_last_feature_map(config, overrides, layer, faces):
    cfg = load_config(CONFIGS / f"{config}.yaml", overrides).model
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    loaded = LoadedModel(
        Path(config), None, cfg.input_size, model.predict_on_batch, tuple("abcdefg"), keras_model=model
    )
    explainer = GradCam(loaded)
    assert explainer.layers == (layer,)
    maps = explainer.face_maps(faces, np.arange(len(faces)))
    assert maps.shape == (len(faces), 48, 48) and np.all((maps >= 0) & (maps <= 1))
    if cfg.crop_size:  # the network never sees the border its centre crop cuts off
        margin = (48 - cfg.crop_size) // 2
        assert np.all(maps[:, :margin] == 0) and np.all(maps[:, :, -margin:] == 0)


def test_report_maps_per_class_cover_right_answers_and_confident_mistakes(faces, tmp_path):
    explainer = GradCam(_loaded(_region_network(TOP_LEFT, 5.0, "top_left"), tmp_path / "region.keras"))
    labels = np.array([0, 0, 1, 1, 0])
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3], [0.3, 0.7]])
    region, elsewhere = class_maps(explainer, faces, labels, probabilities, mistakes=1)
    assert (region.name, region.correct) == ("region", 2)
    np.testing.assert_allclose(region.mean_face, faces[:2].mean(axis=0))
    expected = explainer.face_maps(faces[:2], [0, 0]).mean(axis=0)
    np.testing.assert_allclose(region.mean_map, expected / expected.max(), atol=1e-6)
    ((face, heat, true, probability),) = region.mistakes  # face 2 (0.8) before face 3 (0.7)
    np.testing.assert_array_equal(face, faces[2])
    assert (true, probability) == ("elsewhere", 0.8)
    np.testing.assert_allclose(heat, explainer.face_maps(faces[2:3], [0])[0], atol=1e-6)
    assert (elsewhere.correct, elsewhere.mean_face, len(elsewhere.mistakes)) == (0, None, 1)


def test_heat_overlay_stays_in_its_box_and_keeps_its_geometry():
    photo = np.full((60, 80, 3), 100, dtype=np.uint8)
    heat = np.zeros((48, 48), dtype=np.float32)
    heat[:24, :24] = 1.0  # the face's top-left quadrant
    box = (30, 10, 40, 40)
    out = heat_overlay(photo, heat, box)
    changed = np.any(out != photo, axis=-1)
    outside = np.ones_like(changed)
    outside[10:50, 30:70] = False
    assert not changed[outside].any()
    # The quadrant lands in the box's top-left 20x20 (bilinear resizing blurs its edge by a pixel or two).
    assert changed[10:28, 30:48].all() and not changed[32:50, 30:70].any() and not changed[10:50, 52:70].any()
    # Where the map is 1: jet's dark red (128, 0, 0) at OVERLAY_OPACITY over the photo's 100.
    expected = np.round(100 * (1 - OVERLAY_OPACITY) + np.array([128, 0, 0]) * OVERLAY_OPACITY)
    np.testing.assert_array_equal(out[15, 35], expected)


@pytest.mark.slow
def test_explain_writes_each_face_and_the_photo_with_maps_in_their_boxes(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(
        ["predict", BUNDLED_MODEL, DEMO_PHOTO, "--detect-faces", "--explain", tmp_path, "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    (result,) = json.loads(out)
    (face,) = result["faces"]
    box = face["box"]
    assert iou(box, (113, 66, 95, 95)) > 0.6  # the astronaut's face
    explanation = face["explanation"]
    assert explanation["emotion"] == face["top"][0]["emotion"]
    assert explanation["layers"] == ["member1_mini_xception/head_conv", "member2_mini_xception/head_conv"]
    assert explanation["file"] == str(tmp_path / f"astronaut-face1-{explanation['emotion']}.png")
    assert Image.open(explanation["file"]).size == (192, 192)

    photo = np.asarray(Image.open(DEMO_PHOTO).convert("RGB"))
    explained = np.asarray(Image.open(result["explained"]).convert("RGB"))
    assert result["explained"] == str(tmp_path / "astronaut-gradcam.png") and explained.shape == photo.shape
    x, y, w, h = box
    changed = np.any(explained != photo, axis=-1)
    inside = np.zeros_like(changed)
    inside[y : y + h, x : x + w] = True
    assert changed[inside].mean() > 0.5 and not changed[~inside].any()


@pytest.mark.slow
def test_explain_class_picks_another_class_and_a_crop_is_explained_whole(
    faces, tmp_path, capsys, monkeypatch
):
    model = tmp_path / "region.keras"
    _region_network(TOP_LEFT, 5.0, "top_left").save(model)
    image = np.repeat(
        np.kron(faces[0], np.ones((2, 2), np.uint8))[..., None], 3, axis=2
    )  # 96x96, no face box
    Image.fromarray(image).save(tmp_path / "face.png")
    args = ["predict", model, tmp_path / "face.png", "--explain", tmp_path / "out", "--json"]
    code, out, err = run_cli([*args, "--explain-class", "region"], capsys, monkeypatch)
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["explained"] is None  # no box: the face view is the only map
    view = np.asarray(Image.open(result["faces"][0]["explanation"]["file"]).convert("RGB"))
    original = cv2.resize(image, (192, 192), interpolation=cv2.INTER_LINEAR)
    changed = np.any(np.abs(view.astype(int) - original.astype(int)) > 2, axis=-1)
    scale = 192 // 48
    top, left = TOP_LEFT
    near = np.zeros_like(changed)
    near[
        (top - BLEED) * scale : (top + SIDE + BLEED) * scale,
        (left - BLEED) * scale : (left + SIDE + BLEED) * scale,
    ] = True
    assert changed[near].any() and not changed[~near].any()


def _no_convolution_model(path: Path) -> Path:
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, x).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown class", "'joy' is not a class of the model: expected one of angry, disgust"),
        ("nothing to explain", "nothing to explain: no face found in "),
        ("no convolution", "no convolutional feature map to explain"),
        ("class without --explain", "--explain-class needs --explain DIR"),
    ],
)
def test_bad_explain_requests_are_one_line_and_exit_2(case, message, tmp_path, capsys, monkeypatch):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(blank)
    args = {
        "unknown class": [BUNDLED_MODEL, DEMO_PHOTO, "--explain", tmp_path, "--explain-class", "joy"],
        "nothing to explain": [BUNDLED_MODEL, blank, "--detect-faces", "--explain", tmp_path],
        "no convolution": [
            _no_convolution_model(tmp_path / "dense.keras"),
            DEMO_PHOTO,
            "--explain",
            tmp_path,
        ],
        "class without --explain": [BUNDLED_MODEL, DEMO_PHOTO, "--explain-class", "happy"],
    }[case]
    code, out, err = run_cli(["predict", *args], capsys, monkeypatch)
    assert code == 2
    assert message in " ".join(err.split()), err
    if case != "class without --explain":  # Typer's usage errors come with a usage line and a box
        assert len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*gradcam*")) and not list(tmp_path.glob("*-face*"))


def test_a_saved_model_has_no_layers_to_explain():
    with pytest.raises(ModelError, match="a SavedModel keeps no layers to explain"):
        GradCam(LoadedModel(Path("saved_model"), None, 48, lambda batch: batch, tuple("abcdefg")))


def test_predict_images_through_the_python_api_returns_explanations(faces, tmp_path):
    model = tmp_path / "region.keras"
    _region_network(TOP_LEFT, 5.0, "top_left").save(model)
    Image.fromarray(faces[1]).save(tmp_path / "face.png")
    (result,) = predict_images(model, [tmp_path / "face.png"], explain_dir=tmp_path / "maps")
    (face,) = result.faces
    assert face.explanation.emotion == face.top[0][0]
    assert face.explanation.layers == ("pool",)
    assert face.explanation.file == tmp_path / "maps" / f"face-face1-{face.top[0][0]}.png"


@pytest.mark.slow
def test_the_python_api_explains_faces_of_any_size(faces):
    import fertrain

    model = fertrain.load_model("bundled")
    assert model.explained_layers == ("member1_mini_xception/head_conv", "member2_mini_xception/head_conv")
    big = cv2.resize(faces[0], (96, 96), interpolation=cv2.INTER_CUBIC)
    heat = model.explain(big)
    assert heat.shape == (48, 48) and heat.max() == pytest.approx(1.0)
    top = int(model.predict(big).argmax())
    expected = GradCam(model.loaded).face_maps(
        cv2.resize(big, (48, 48), interpolation=cv2.INTER_AREA)[None], [top]
    )
    np.testing.assert_allclose(heat, expected[0], atol=1e-6)
    assert model.explain(list(faces[:3]), emotion="sad").shape == (3, 48, 48)
    with pytest.raises(fertrain.DataError, match="'joy' is not a class of the model"):
        model.explain(big, emotion="joy")
