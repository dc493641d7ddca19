"""The Xception family: exact sizes, outputs, rescaling, save/load, MAC counts, `fertrain summary`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_main import run_cli

from fertrain.config import ModelConfig, load_config
from fertrain.models import build_model
from fertrain.models import summary as summary_module
from fertrain.models.summary import layer_macs, summarize

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A few-thousand-parameter Xception with every flow, a dropout head and BN on the shortcuts.
TINY_XCEPTION = ModelConfig(
    architecture="xception", width_multiplier=1 / 32, middle_repeats=1, dropout=0.5, shortcut_batchnorm=True
)
# Tests that take a config by name: these two in code, the rest from configs/.
NAMED_MODELS = {
    "tiny_xception": TINY_XCEPTION,
    "tiny_xception_se": TINY_XCEPTION.model_copy(update={"squeeze_excite": 0.5}),
}


def model_config(name: str, *overrides: str) -> ModelConfig:
    return load_config(CONFIGS / f"{name}.yaml", list(overrides)).model


def named_model(name: str) -> ModelConfig:
    return NAMED_MODELS[name] if name in NAMED_MODELS else model_config(name)


def random_faces(count: int, seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 1), dtype=np.uint8)


def test_mini_xception_has_58423_parameters() -> None:
    assert build_model(model_config("mini_xception")).count_params() == 58_423


@pytest.mark.slow
def test_xception_has_17642719_parameters() -> None:
    assert build_model(model_config("xception")).count_params() == 17_642_719


def separable_params(in_channels: int, filters: int, bias: bool = True) -> int:
    return in_channels * 9 + in_channels * filters + (filters if bias else 0)


@pytest.mark.slow
def test_paper_exit_widths_1536_2048_are_one_line_away() -> None:
    """Only the two exit separable convs, their BN and the Dense head change (all hand-counted)."""
    paper = build_model(model_config("xception", "model.exit_separable_widths=[1536, 2048]"))

    def exit_part(first: int, second: int) -> int:
        batchnorm = 4 * (first + second)
        return separable_params(1024, first) + separable_params(first, second) + batchnorm + second * 7 + 7

    assert paper.count_params() == 17_642_719 - exit_part(728, 1024) + exit_part(1536, 2048)
    assert paper.get_layer("exit2_sepconv").filters == 2048


def test_width_multiplier_scales_every_width() -> None:
    model = build_model(TINY_XCEPTION)
    assert model.get_layer("stem1_conv").filters == 1  # 32 / 32
    assert model.get_layer("entry3_2_sepconv").filters == 23  # round(728 / 32)
    assert model.get_layer("middle1_3_sepconv").filters == 23
    assert model.get_layer("exit_block_skip_conv").filters == 32  # 1024 / 32
    assert model.get_layer("exit2_sepconv").filters == 32


def test_batchnorm_momentum_reaches_every_batchnorm() -> None:
    model = build_model(model_config("quickstart"))
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}


def test_l2_scope_all_penalises_every_conv_and_dense_kernel() -> None:
    model = build_model(model_config("quickstart", "model.l2_scope=all"))
    kernels = [
        w for w in model.trainable_weights if w.name in ("kernel", "depthwise_kernel", "pointwise_kernel")
    ]
    # 2 stem convs + 3 blocks x (2 separable convs x 2 kernels + 1 skip conv) + the head conv.
    assert len(kernels) == len(model.losses) == 2 + 3 * 5 + 1
    expected = sum(0.01 * np.sum(keras.ops.convert_to_numpy(k) ** 2) for k in kernels)
    penalty = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    assert penalty == pytest.approx(expected, rel=1e-5)
    assert build_model(TINY_XCEPTION).losses == []


def test_middle_repeats_add_hand_counted_blocks_to_mini_xception() -> None:
    base = build_model(model_config("mini_xception")).count_params()
    deeper = build_model(model_config("mini_xception", "model.middle_repeats=2")).count_params()
    # Each middle block: 3 x (SeparableConv 128->128 without bias + BN of 128).
    assert deeper - base == 2 * 3 * (separable_params(128, 128, bias=False) + 4 * 128)


def test_squeeze_excite_adds_hand_counted_gates_to_every_residual_block() -> None:
    base = build_model(model_config("mini_xception", "model.middle_repeats=1")).count_params()
    gated = build_model(
        model_config("mini_xception", "model.middle_repeats=1", "model.squeeze_excite=0.25")
    ).count_params()

    def gate(width: int) -> int:  # 1x1 conv width -> width/4 and back, both with bias
        hidden = round(width * 0.25)
        return width * hidden + hidden + hidden * width + width

    # Entry blocks 16, 32, 64, 128 and one middle block of 128.
    assert gated - base == sum(gate(width) for width in (16, 32, 64, 128, 128))


def test_squeeze_excite_scales_each_channel_by_its_gate() -> None:
    """The block's branch times sigmoid(W2 relu(W1 mean(branch) + b1) + b2), per image and channel."""
    model = build_model(model_config("mini_xception", "model.squeeze_excite=0.5"))
    rng = np.random.default_rng(3)
    for name in ("entry2_se_reduce", "entry2_se_expand"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    probe = keras.Model(
        model.input, [model.get_layer("entry2_pool").output, model.get_layer("entry2_se_scale").output]
    )
    branch, scaled = (keras.ops.convert_to_numpy(t) for t in probe(random_faces(2), training=False))
    (w1, b1), (w2, b2) = (model.get_layer(n).get_weights() for n in ("entry2_se_reduce", "entry2_se_expand"))
    squeezed = branch.mean(axis=(1, 2))
    hidden = np.maximum(squeezed @ w1[0, 0] + b1, 0.0)
    gate = 1.0 / (1.0 + np.exp(-(hidden @ w2[0, 0] + b2)))
    assert w1.shape[-1] == 16  # half of entry2's 32 channels
    np.testing.assert_allclose(scaled, branch * gate[:, None, None, :], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", ["quickstart", "tiny_xception"])
def test_output_is_float32_softmax_over_seven_classes(config: str) -> None:
    cfg = named_model(config)
    probabilities = keras.ops.convert_to_numpy(build_model(cfg)(random_faces(5), training=False))
    assert probabilities.shape == (5, 7)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert (probabilities > 0).all()


def test_uint8_and_float_pixels_give_the_same_predictions() -> None:
    model = build_model(model_config("quickstart"))
    faces = random_faces(4)
    np.testing.assert_array_equal(
        model.predict(faces, verbose=0), model.predict(faces.astype("float32"), verbose=0)
    )


@pytest.mark.parametrize(("scaling", "low", "high"), [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)])
def test_model_rescales_raw_pixels_itself(scaling: str, low: float, high: float) -> None:
    model = build_model(ModelConfig(input_scaling=scaling))
    rescale = keras.Model(model.input, model.get_layer("rescale").output)
    pixels = np.zeros((1, 48, 48, 1), dtype=np.uint8)
    pixels[0, 0, :3, 0] = [0, 51, 255]
    scaled = keras.ops.convert_to_numpy(rescale(pixels))[0, 0, :3, 0]
    np.testing.assert_allclose(scaled, [low, low + (high - low) * 0.2, high], atol=1e-6)


def test_softmax_stays_float32_under_mixed_precision() -> None:
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_model(model_config("quickstart"))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert model.get_layer("stem1_conv").compute_dtype == "float16"
    probabilities = keras.ops.convert_to_numpy(model(random_faces(3), training=False))
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("config", ["quickstart", "tiny_xception", "tiny_xception_se"])
def test_keras_file_round_trip_gives_identical_predictions(config: str, tmp_path: Path) -> None:
    model = build_model(named_model(config))
    # Perturb every weight and BN statistic so that nothing equals its initial value.
    rng = np.random.default_rng(1)
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        variable.assign(value * rng.uniform(0.5, 1.5, value.shape) + rng.uniform(0.0, 0.1, value.shape))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    faces = random_faces(8)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(faces, training=False)),
        keras.ops.convert_to_numpy(model(faces, training=False)),
    )


def single_layer_model(layer: keras.layers.Layer, shape: tuple[int, ...]) -> keras.Model:
    return keras.Sequential([keras.Input(shape), layer])


MAC_CASES = [
    # (layer, input shape, hand-computed MACs per image)
    (keras.layers.Conv2D(16, 3), (10, 12, 3), 8 * 10 * 16 * (3 * 3 * 3)),
    (keras.layers.Conv2D(8, 3, strides=2, padding="same"), (9, 9, 4), 5 * 5 * 8 * (3 * 3 * 4)),
    (keras.layers.Conv2D(6, (1, 5), groups=2), (7, 7, 4), 7 * 3 * 6 * (1 * 5 * 2)),
    (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 5), 4 * 4 * 5 * 2 * 9),
    # Depthwise 3x3 over 5 channels at 8x8, then pointwise 5 -> 7 at 8x8.
    (keras.layers.SeparableConv2D(7, 3, padding="same"), (8, 8, 5), 8 * 8 * 5 * 9 + 8 * 8 * 5 * 7),
    (keras.layers.SeparableConv2D(7, 3, strides=2), (9, 9, 3), 4 * 4 * 3 * 9 + 4 * 4 * 3 * 7),
    (keras.layers.Dense(10), (20,), 20 * 10),
    (keras.layers.Dense(4), (3, 6), 3 * 6 * 4),
    (keras.layers.BatchNormalization(), (4, 4, 2), 0),
    (keras.layers.MaxPooling2D(), (4, 4, 2), 0),
]


@pytest.mark.parametrize(("layer", "shape", "expected"), MAC_CASES, ids=lambda case: str(case))
def test_mac_count_of_a_single_layer_matches_hand_computation(
    layer: keras.layers.Layer, shape: tuple[int, ...], expected: int
) -> None:
    model = single_layer_model(layer, shape)
    assert layer_macs(layer) == expected
    assert summarize(model).macs == expected


def test_summary_counts_match_keras_and_the_hand_count_of_the_stem() -> None:
    model = build_model(model_config("mini_xception"))
    result = summarize(model)
    assert result.total_params == model.count_params() == 58_423
    assert result.trainable_params + result.non_trainable_params == 58_423
    # Non-trainable: BN moving mean and variance, 2 x channels per BN layer.
    bn_channels = 8 + 8 + sum(3 * w for w in (16, 32, 64, 128))
    assert result.non_trainable_params == 2 * bn_channels
    assert result.size_mb == pytest.approx(58_423 * 4 / 1e6)
    by_name = {layer.name: layer for layer in result.layers}
    assert by_name["stem1_conv"].macs == 46 * 46 * 8 * 9 * 1
    assert by_name["stem2_conv"].macs == 44 * 44 * 8 * 9 * 8
    assert by_name["head_conv"].macs == 3 * 3 * 7 * 9 * 128
    assert result.macs == sum(layer.macs for layer in result.layers)
    assert by_name["entry1_add"].macs == 0


def test_nested_models_count_their_inner_layers() -> None:
    inner = single_layer_model(keras.layers.Dense(4), (6,))
    outer = keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(2)])
    assert summarize(outer).macs == 6 * 4 + 4 * 2


def test_summary_cli_json(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code, out, _ = run_cli(
        ["summary", "--config", str(CONFIGS / "mini_xception.yaml"), "--json"], capsys, monkeypatch
    )
    assert code == 0
    report = json.loads(out)
    assert report["total_params"] == 58_423
    expected = summarize(build_model(model_config("mini_xception")))
    assert report["macs"] == expected.macs
    assert report["layers"][2] == {
        "name": "stem1_conv",
        "kind": "Conv2D",
        "output_shape": [None, 46, 46, 8],
        "params": 72,
        "macs": 152_352,
    }


def test_summary_cli_table_with_set_override(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    config = str(CONFIGS / "mini_xception.yaml")
    code, out, _ = run_cli(
        ["summary", "--config", config, "--set", "model.num_classes=3"], capsys, monkeypatch
    )
    assert code == 0
    # The 3x3 head conv shrinks from 7 to 3 filters: 4 x (9 x 128 + 1) fewer parameters.
    assert f"{58_423 - 4 * (9 * 128 + 1):,} total" in out
    assert "head_conv" in out and "MACs per image" in out


def test_plot_without_graphviz_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(summary_module.shutil, "which", lambda _name: None)
    target = tmp_path / "graph.png"
    code, _, err = run_cli(
        ["summary", "--config", str(CONFIGS / "quickstart.yaml"), "--plot", str(target)], capsys, monkeypatch
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --plot needs Graphviz's `dot` program: install graphviz "
        "(apt-get install graphviz, brew install graphviz or conda install graphviz)"
    ]
    assert not target.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("graph.gif", "graph.gif: the graph file name must end in .png, .svg, .pdf, .jpg, .jpeg, .dot"),
        ("graph", "graph: the graph file name must end in .png,"),
        ("missing/graph.png", "graph.png: folder {tmp}/missing does not exist"),
    ],
)
def test_plot_refuses_bad_file_names(
    name: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    code, _, err = run_cli(
        ["summary", "--config", str(CONFIGS / "quickstart.yaml"), "--plot", str(tmp_path / name)],
        capsys,
        monkeypatch,
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert message.format(tmp=tmp_path) in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(summary_module.shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_plot_draws_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    target = tmp_path / "graph.png"
    code, out, _ = run_cli(
        ["summary", "--config", str(CONFIGS / "quickstart.yaml"), "--plot", str(target)], capsys, monkeypatch
    )
    assert code == 0
    assert target.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["graph.png"]
    assert f"wrote {target}" in out.replace("\n", "")


# Runs in a fresh interpreter under another backend: builds both heads, loads the TF-saved models
# (tiny_xception's middle flow runs on 3x3 maps, where SeparableConv2D takes its shifted path on JAX).
BACKEND_SCRIPT = """
import json, sys, keras, numpy as np
from fertrain.config import ModelConfig, load_config
from fertrain.models import build_model
spec = json.loads(sys.argv[1])
quickstart = build_model(load_config(spec["config"]).model)
tiny_xception = build_model(ModelConfig(**spec["tiny_xception"]))
faces = np.load(spec["faces"])
for model_path, out in zip(spec["models"], spec["outs"]):
    np.save(out, keras.saving.load_model(model_path, safe_mode=True).predict(faces, verbose=0))
print(json.dumps({
    "backend": keras.backend.backend(),
    "params": [quickstart.count_params(), tiny_xception.count_params()],
    "row_sums": quickstart.predict(faces, verbose=0).sum(axis=1).tolist(),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_builds_and_loads_under_another_backend(backend: str, tmp_path: Path) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    spec = {
        "config": str(CONFIGS / "quickstart.yaml"),
        "tiny_xception": TINY_XCEPTION.model_dump(),
        "models": [str(tmp_path / "quickstart.keras"), str(tmp_path / "tiny_xception.keras")],
        "faces": str(tmp_path / "faces.npy"),
        "outs": [str(tmp_path / "quickstart.npy"), str(tmp_path / "tiny_xception.npy")],
    }
    models = [build_model(load_config(spec["config"]).model), build_model(TINY_XCEPTION)]
    for model, path in zip(models, spec["models"], strict=True):
        model.save(path)
    faces = random_faces(4)
    np.save(spec["faces"], faces)
    done = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT, json.dumps(spec)],
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    assert report["params"] == [model.count_params() for model in models]
    np.testing.assert_allclose(report["row_sums"], 1.0, rtol=1e-6)
    for model, out in zip(models, spec["outs"], strict=True):
        np.testing.assert_allclose(np.load(out), model.predict(faces, verbose=0), atol=1e-5)
