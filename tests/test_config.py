"""The config schema: YAML loading, `extends`, `--set` overrides, presets and one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fertrain.config import (
    ARCHITECTURE_PRESETS,
    Config,
    ModelConfig,
    dump_config,
    load_config,
)
from fertrain.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["mini_xception", "xception", "quickstart"])
def test_bundled_configs_round_trip_through_dump(name: str, tmp_path: Path) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name
    dumped = write(tmp_path / "resolved.yaml", dump_config(config))
    assert load_config(dumped) == config


@pytest.mark.parametrize("architecture", ["mini_xception", "xception"])
def test_architecture_alone_selects_the_preset_the_bundled_yaml_spells_out(architecture: str) -> None:
    assert ModelConfig(architecture=architecture) == load_config(CONFIGS / f"{architecture}.yaml").model
    assert (
        ModelConfig(architecture=architecture).model_dump(include=set(ARCHITECTURE_PRESETS["xception"]))
        == (ARCHITECTURE_PRESETS[architecture])
    )


def test_defaults_are_mini_xception() -> None:
    assert Config().model == ModelConfig(architecture="mini_xception")


def test_explicit_fields_win_over_the_preset() -> None:
    model = ModelConfig(architecture="xception", middle_repeats=2, exit_separable_widths=[1536, 2048])
    assert (model.middle_repeats, model.exit_separable_widths) == (2, [1536, 2048])
    assert model.entry_widths == [128, 256, 728]


def test_set_overrides_coerce_types() -> None:
    config = load_config(
        CONFIGS / "mini_xception.yaml",
        [
            "model.input_size=64",
            "model.width_multiplier=0.5",
            "model.entry_widths=[8, 16]",
            "model.middle_width=16",
            "model.middle_repeats=2",
            "model.use_bias=true",
            "model.head=dense",
            "train.jit_compile=off",
            "train.optimizer.learning_rate=3e-4",
            "name=tiny",
        ],
    )
    model = config.model
    assert (model.input_size, model.width_multiplier, model.entry_widths) == (64, 0.5, [8, 16])
    assert (model.middle_repeats, model.use_bias, model.head) == (2, True, "dense")
    assert config.train.jit_compile == "off"
    assert config.train.optimizer.learning_rate == pytest.approx(3e-4)
    assert config.name == "tiny"


def test_set_without_file_starts_from_defaults() -> None:
    config = load_config(None, ["model.architecture=xception"])
    assert config.model == ModelConfig(architecture="xception")


def test_extends_inherits_and_overrides_nested_keys(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml", "model:\n  architecture: xception\n  dropout: 0.3\ndata:\n  batch_size: 16\n"
    )
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "middle.yaml", "extends: ../base.yaml\nmodel:\n  middle_repeats: 4\n")
    child = write(tmp_path / "child.yaml", "extends: sub/middle.yaml\nmodel:\n  width_multiplier: 0.25\n")
    config = load_config(child)
    assert config.name == "child"
    assert config.model == ModelConfig(
        architecture="xception", dropout=0.3, middle_repeats=4, width_multiplier=0.25
    )
    assert config.data.batch_size == 16


def test_quickstart_extends_mini_xception() -> None:
    quick = load_config(CONFIGS / "quickstart.yaml").model
    mini = load_config(CONFIGS / "mini_xception.yaml").model
    assert quick.model_dump(
        exclude={"width_multiplier", "entry_widths", "batchnorm_momentum"}
    ) == mini.model_dump(exclude={"width_multiplier", "entry_widths", "batchnorm_momentum"})


# Each bad config, as YAML text, and the one-line message it must produce after "FILE: ".
BAD_YAML = [
    ("model:\n  middle_repeats: -1\n", "model.middle_repeats: must be >= 0, got -1"),
    ("model:\n  dropout: 1.0\n", "model.dropout: must be < 1.0, got 1.0"),
    ("model:\n  width_multiplier: 0\n", "model.width_multiplier: must be > 0.0, got 0"),
    ("model:\n  input_size: 4096\n", "model.input_size: must be <= 1024, got 4096"),
    (
        "model:\n  architecture: resnet\n",
        "model.architecture: must be one of 'xception' or 'mini_xception', got 'resnet'",
    ),
    ("model:\n  head: linear\n", "model.head: must be one of 'dense' or 'conv', got 'linear'"),
    ("model:\n  input_size: big\n", "model.input_size: input should be a valid integer"),
    ("model:\n  use_bias: maybe\n", "model.use_bias: input should be a valid boolean"),
    ("model:\n  entry_widths: [16, x]\n", "model.entry_widths.1: input should be a valid integer"),
    ("model:\n  entry_widths: 16\n", "model.entry_widths: input should be a valid list, got 16"),
    ("model:\n  entry_widths: [16, 0]\n", "model.entry_widths: every width must be >= 1, got [16, 0]"),
    ("model:\n  stem_widths: []\n", "model.stem_widths: must have at least 1 item(s), got []"),
    ("model:\n  stem_strides: [1, 3]\n", "model.stem_strides: every stride must be 1 or 2, got [1, 3]"),
    (
        "model:\n  stem_strides: [1]\n",
        "model.stem_strides: needs one stride per stem width (2 widths), got [1]",
    ),
    (
        "model:\n  input_size: 8\n  stem_widths: [8, 8, 8, 8]\n  stem_strides: [1, 1, 1, 1]\n",
        "model.stem_strides: must leave at least 1 pixel of the 8px image the stem sees "
        "after the 3x3 'valid' stem convs, got [1, 1, 1, 1]",
    ),
    (
        "model:\n  middle_repeats: 1\n  middle_width: 64\n",
        "model.middle_width: must equal the width entering the middle flow (128) "
        "when middle_repeats > 0, got 64",
    ),
    ("model:\n  exit_widths: [728]\n", "model.exit_widths: must be [] or two widths, got [728]"),
    ("model:\n  kernel: 5\n", "model.kernel: unknown key (allowed: architecture, input_size,"),
    ("modle:\n  input_size: 5\n", "modle: unknown key (allowed: name, model, data, train)"),
    ("model: 3\n", "model: input should be a valid dictionary or instance of ModelConfig"),
    ("data:\n  augment:\n    flip: true\n", "data.augment.flip: unknown key (allowed: horizontal_flip,"),
    (
        "train:\n  class_weights: [1, -1]\n",
        "train.class_weights: class weights must be >= 0, got [1.0, -1.0]",
    ),
    ("model:\n  input_size: [\n", "line 3: not valid YAML"),
    ("- model\n", "expected a mapping of sections, got list"),
]


@pytest.mark.parametrize(("text", "message"), BAD_YAML, ids=[m.split(":")[0] for _, m in BAD_YAML])
def test_bad_config_is_one_line_naming_the_key_and_what_is_allowed(
    text: str, message: str, tmp_path: Path
) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.split(":")[0].endswith("bad.yaml")
    assert message in text
    assert "more)" not in text


def test_several_errors_report_the_first_and_a_count(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "model:\n  middle_repeats: -1\n  dropout: 2\n")
    with pytest.raises(ConfigError, match=r"model.middle_repeats: must be >= 0, got -1 \(and 1 more\)$"):
        load_config(path)


BAD_SET = [
    ("model.input_size", "--set model.input_size: expected key.path=value"),
    ("=3", "--set =3: expected key.path=value"),
    ("name.first=x", "--set name.first=x: name is not a section"),
    ("model.middle_repeats=-2", "with --set: model.middle_repeats: must be >= 0, got -2"),
    ("model.input_size=abc", "with --set: model.input_size: input should be a valid integer"),
    ("model.depth=3", "with --set: model.depth: unknown key (allowed: architecture,"),
]


@pytest.mark.parametrize(("assignment", "message"), BAD_SET)
def test_bad_set_override_is_refused(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS / "mini_xception.yaml", [assignment])
    assert message in str(caught.value)


def test_missing_file_and_extends_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found$"):
        load_config(tmp_path / "nope.yaml")
    orphan = write(tmp_path / "orphan.yaml", "extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml: config file not found$"):
        load_config(orphan)
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends itself through .*a.yaml -> .*b.yaml$"):
        load_config(tmp_path / "a.yaml")


def test_cli_reports_a_bad_config_in_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fertrain.cli import main

    path = write(tmp_path / "bad.yaml", "model:\n  middle_repeats: -1\n")
    monkeypatch.setattr(sys, "argv", ["fertrain", "summary", "--config", str(path)])
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {path}: model.middle_repeats: must be >= 0, got -1"]
