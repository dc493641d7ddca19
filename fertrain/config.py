"""The one configuration schema: YAML files, `--set` overrides and each run's resolved config.yaml.

Every width, depth and training setting is a field here; nothing else in fertrain reads YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fertrain.errors import ConfigError

TargetMode = Literal[
    "labels", "ferplus_majority", "ferplus_probability", "ferplus_crossentropy", "ferplus_multi_target"
]


class Section(BaseModel):
    """Refuses unknown keys so that a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _yaml_switch(value: Any) -> Any:
    # YAML 1.1 reads bare `on`/`off` as booleans; users mean the words.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


_MINI_XCEPTION = {
    "input_scaling": "symmetric",
    "stem_widths": [8, 8],
    "stem_strides": [1, 1],
    "entry_widths": [16, 32, 64, 128],
    "block_preactivation": False,
    "middle_repeats": 0,
    "middle_layers": 3,
    "middle_width": 128,
    "exit_widths": [],
    "exit_separable_widths": [],
    "head": "conv",
    "use_bias": False,
    "shortcut_bias": False,
    "shortcut_batchnorm": True,
    "dropout": 0.0,
    "l2": 0.01,
    "l2_scope": "stem",
}
_XCEPTION = {
    "input_scaling": "unit",
    "stem_widths": [32, 64],
    "stem_strides": [2, 1],
    "entry_widths": [128, 256, 728],
    "block_preactivation": True,
    "middle_repeats": 8,
    "middle_layers": 3,
    "middle_width": 728,
    "exit_widths": [728, 1024],
    "exit_separable_widths": [728, 1024],
    "head": "dense",
    "use_bias": True,
    "shortcut_bias": True,
    "shortcut_batchnorm": False,
    "dropout": 0.3,
    "l2": 0.0,
    "l2_scope": "all",
}
ARCHITECTURE_PRESETS = {"mini_xception": _MINI_XCEPTION, "xception": _XCEPTION}


def _stem_input_size(input_size: int | None, crop_size: int | None, resize_to: int | None) -> int | None:
    return resize_to or crop_size or input_size


class ModelConfig(Section):
    """An Xception-family network. `xception` and `mini_xception` differ only in these values:
    `architecture` picks the preset that fills every field the config leaves out.

    Widths are before `width_multiplier`. Every 3x3 stem conv uses 'valid' padding; each entry
    block (and the exit block) halves the spatial size.
    """

    architecture: Literal["xception", "mini_xception"] = "mini_xception"
    input_size: int = Field(48, ge=8, le=1024)
    crop_size: int = Field(
        0,
        ge=0,
        description="0: off; else the network centre-crops its input to this size (with "
        "data.augment.crop_padding = (input_size - crop_size) / 2 it trains on random crops)",
    )
    resize_to: int = Field(
        0, ge=0, le=1024, description="0: off; else the (cropped) input is resized to this size, bilinear"
    )
    input_scaling: Literal["unit", "symmetric"] = Field(
        description="unit: pixels / 255 in [0, 1]; symmetric: pixels / 127.5 - 1 in [-1, 1]"
    )
    num_classes: int = Field(
        7, ge=2, description="left out: as many as the data's classes; given: checked against them"
    )
    width_multiplier: float = Field(1.0, gt=0.0, le=16.0)
    stem_widths: list[int] = Field(min_length=1, description="plain 3x3 convs before the residual blocks")
    stem_strides: list[int] = Field(min_length=1, description="one stride (1 or 2) per stem conv")
    entry_widths: list[int] = Field(description="one downsampling residual block per width")
    block_preactivation: bool = Field(description="ReLU before the first separable conv of each block")
    middle_repeats: int = Field(ge=0, description="identity-shortcut blocks in the middle flow")
    middle_layers: int = Field(ge=1, description="separable convs per middle block")
    middle_width: int = Field(ge=1, description="must equal the width entering the middle flow")
    exit_widths: list[int] = Field(description="[] or the exit downsampling block's two widths")
    exit_separable_widths: list[int] = Field(description="separable convs after the exit block")
    head: Literal["dense", "conv"] = Field(
        description="dense: pool then Dense; conv: 3x3 conv to the classes then pool"
    )
    use_bias: bool = Field(description="bias on stem and separable convs (BN follows each)")
    shortcut_bias: bool = Field(description="bias on the 1x1 shortcut convs")
    shortcut_batchnorm: bool = Field(description="BatchNormalization after each 1x1 shortcut conv")
    batchnorm_momentum: float = Field(
        0.99, gt=0.0, lt=1.0, description="lower it (e.g. 0.9) when an epoch is only a few dozen steps"
    )
    squeeze_excite: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="0: off; else each residual block's branch is reweighted per channel by a "
        "squeeze-and-excitation gate whose hidden width is this fraction of the block's width",
    )
    dropout: float = Field(ge=0.0, lt=1.0, description="dropout before the classifier")
    l2: float = Field(ge=0.0, description="L2 penalty on conv and dense kernels (see l2_scope)")
    l2_scope: Literal["all", "stem"] = Field(
        description="all: every kernel; stem: only the plain stem convs, which is what Arriaga et "
        "al.'s mini-Xception code trained with (Keras 2 ignored kernel_regularizer on SeparableConv2D)"
    )

    @property
    def stem_input_size(self) -> int:
        """The side of the image the first convolution sees, after the crop and the resize."""
        return _stem_input_size(self.input_size, self.crop_size, self.resize_to)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # An unknown architecture still gets a full preset so that its one error is the only one.
        preset = ARCHITECTURE_PRESETS.get(data.get("architecture"), _MINI_XCEPTION)
        return {**preset, **data}

    @field_validator("stem_widths", "entry_widths", "exit_widths", "exit_separable_widths")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        if any(w < 1 for w in widths):
            raise ValueError(f"every width must be >= 1, got {widths}")
        return widths

    @field_validator("stem_strides")
    @classmethod
    def _stem_fits_input(cls, strides: list[int], info: ValidationInfo) -> list[int]:
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"every stride must be 1 or 2, got {strides}")
        widths = info.data.get("stem_widths")
        if widths is not None and len(widths) != len(strides):
            raise ValueError(f"needs one stride per stem width ({len(widths)} widths), got {strides}")
        seen = _stem_input_size(
            info.data.get("input_size"), info.data.get("crop_size"), info.data.get("resize_to")
        )
        if seen is not None:
            size = seen
            for stride in strides:
                size = (size - 3) // stride + 1
            if size < 1:
                raise ValueError(
                    f"must leave at least 1 pixel of the {seen}px image the stem sees "
                    f"after the 3x3 'valid' stem convs, got {strides}"
                )
        return strides

    @field_validator("crop_size")
    @classmethod
    def _crop_inside_input(cls, crop: int, info: ValidationInfo) -> int:
        size = info.data.get("input_size")
        if crop and size is not None and not (8 <= crop <= size and (size - crop) % 2 == 0):
            raise ValueError(
                f"must be 0 or between 8 and input_size ({size}) with an even margin, got {crop}"
            )
        return crop

    @field_validator("middle_width")
    @classmethod
    def _middle_matches_entry(cls, width: int, info: ValidationInfo) -> int:
        widths = info.data.get("entry_widths") or info.data.get("stem_widths")
        if info.data.get("middle_repeats") and widths and width != widths[-1]:
            raise ValueError(
                f"must equal the width entering the middle flow ({widths[-1]}) "
                f"when middle_repeats > 0, got {width}"
            )
        return width

    @field_validator("exit_widths")
    @classmethod
    def _two_exit_widths(cls, widths: list[int]) -> list[int]:
        if len(widths) not in (0, 2):
            raise ValueError(f"must be [] or two widths, got {widths}")
        return widths


class AugmentConfig(Section):
    """Training-only augmentation; each strength 0 (or false) turns that transform off."""

    horizontal_flip: bool = True
    rotation_degrees: float = Field(10.0, ge=0.0, le=180.0)
    zoom: float | tuple[float, float] = Field(
        0.1,
        description="z: zoom in or out by up to z (a fraction of the side); [low, high]: a scale "
        "range as in random-resized-crop, e.g. [-0.2, 0.2] (negative zooms in, showing less)",
    )
    shift: float = Field(0.1, ge=0.0, lt=1.0)
    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding by this many pixels")
    erasing_probability: float = Field(0.0, ge=0.0, le=1.0)
    erasing_max_area: float = Field(0.25, gt=0.0, le=1.0)
    fill_mode: Literal["reflect", "nearest", "constant", "wrap"] = "reflect"
    brightness: float = Field(0.0, ge=0.0, le=1.0, description="shift by up to this fraction of 255")
    contrast: float = Field(0.0, ge=0.0, le=1.0, description="scale contrast by 1 +- up to this")
    mixup_alpha: float = Field(0.0, ge=0.0, description="mixup's Beta(alpha, alpha); 0: off")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="CutMix's Beta(alpha, alpha); 0: off")
    mix_probability: float = Field(
        1.0, ge=0.0, le=1.0, description="share of training images mixed when mixup or CutMix is on"
    )

    @field_validator("zoom")
    @classmethod
    def _zoom_range(cls, zoom: float | tuple[float, float]) -> float | tuple[float, float]:
        low, high = (-zoom, zoom) if isinstance(zoom, float | int) else zoom
        if not (-1.0 < low <= high < 1.0) or (isinstance(zoom, float | int) and zoom < 0):
            raise ValueError(f"must be a fraction in [0, 1) or a range [low, high] in (-1, 1), got {zoom}")
        return zoom


class DataConfig(Section):
    dir: str = "prepared/sample"
    batch_size: int = Field(64, ge=1)
    targets: TargetMode = Field(
        "labels",
        description="labels: each face's one label; ferplus_*: FER+'s votes (data prepared with --ferplus) "
        "as Barsoum et al. 2016 train on them: majority (one-hot of the strict majority), probability (a "
        "class drawn from the vote distribution at each use), crossentropy (the distribution itself), "
        "multi_target (the likelihood of the set of classes with >= 30 % of the votes); "
        "rules in data/README.md",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    beta_1: float = Field(0.9, ge=0.0, lt=1.0)
    beta_2: float = Field(0.999, ge=0.0, lt=1.0)
    epsilon: float = Field(1e-7, gt=0.0)


class ScheduleConfig(Section):
    name: Literal["constant", "cosine", "one_cycle", "reduce_on_plateau"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0.0)
    min_learning_rate: float = Field(0.0, ge=0.0)
    one_cycle_start_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    one_cycle_div_factor: float = Field(25.0, ge=1.0, description="one-cycle starts at learning_rate / this")
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(5, ge=1)


class DistillConfig(Section):
    """Knowledge distillation: the student also learns the teachers' probabilities, computed once
    per training face before the first epoch (mean over the teachers and the `tta` views)."""

    teachers: list[str] = Field(
        default_factory=list,
        description="[]: off; else run directories, model files or bundled model names (bundled, ferplus) "
        "whose classes are the data's",
    )
    weight: float = Field(0.5, ge=0.0, le=1.0, description="share of the loss that is the teachers'")
    temperature: float = Field(
        2.0, gt=0.0, description="softens both distributions; the term is scaled by T^2"
    )
    tta: Literal["none", "flip", "crops", "ten_crop"] = Field(
        "ten_crop", description="views of each face the teachers' probabilities are averaged over"
    )


class TrainConfig(Section):
    epochs: int = Field(30, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    weight_decay: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    early_stopping_patience: int = Field(10, ge=0, description="0 turns early stopping off")
    seed: int = 42
    deterministic: bool = False
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = "auto"
    jit_compile: Literal["auto", "on", "off"] = "auto"
    distribution: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    steps_per_execution: int = Field(1, ge=1)
    checkpoint_every_s: float = Field(
        0.0,
        ge=0.0,
        description="0: last.keras and the resume backup after every epoch; else at most this often "
        "and after the final epoch (a resumed run redoes the epochs since its last checkpoint; a better "
        "model.keras waits for the next checkpoint)",
    )
    distill: DistillConfig = Field(default_factory=DistillConfig)
    ema: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="0: off; else the momentum of an exponential moving average of the weights, "
        "which validation, checkpoints and the saved model then use (e.g. 0.999); it ramps up as "
        "min(ema, t / (t + 9)) at update t, so early epochs validate recent weights",
    )
    init_from: str | None = Field(
        None,
        description="start from a trained model: bundled, a run directory or a model file; every layer "
        "whose name and weight shapes match is copied, the head only when the data's classes are the "
        "source's (an averaging ensemble such as bundled: the member sharing the most weights)",
    )
    freeze_epochs: int = Field(
        0,
        ge=0,
        description="with init_from: for the first N epochs only the layers not copied (the new head), "
        "the head and those named in unfrozen_layers train; the others keep their weights and "
        "BatchNormalization statistics; then everything trains",
    )
    unfrozen_layers: list[str] = Field(
        default_factory=list,
        description="layer-name prefixes (e.g. exit, middle2) that also train during freeze_epochs",
    )

    @field_validator("jit_compile", "mixed_precision", mode="before")
    @classmethod
    def _switch_words(cls, value: Any) -> Any:
        return _yaml_switch(value)

    @field_validator("class_weights")
    @classmethod
    def _nonnegative_class_weights(cls, value: Any) -> Any:
        if isinstance(value, list) and any(w < 0 for w in value):
            raise ValueError(f"class weights must be >= 0, got {value}")
        return value

    @field_validator("freeze_epochs")
    @classmethod
    def _freezing_needs_a_source(cls, epochs: int, info: ValidationInfo) -> int:
        if epochs and not info.data.get("init_from"):
            raise ValueError("needs train.init_from: the layers it copies are the ones kept frozen")
        return epochs


class Config(Section):
    """A whole fertrain configuration; `name` defaults to the YAML file's stem."""

    name: str = "fertrain"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _section_keys(path: tuple[str | int, ...]) -> list[str]:
    section: type[BaseModel] = Config
    for key in path:
        annotation = section.model_fields[str(key)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        section = annotation
    return list(section.model_fields)


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    got = error.get("input")
    limits = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in limits:
        symbol, key = limits[kind]
        return f"must be {symbol} {ctx[key]}, got {got!r}"
    if kind == "extra_forbidden":
        return f"unknown key (allowed: {', '.join(_section_keys(error['loc'][:-1]))})"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {got!r}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s), got {got!r}"
    if kind == "missing":
        return "is required"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got!r}"


def _format_validation(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    # Unions report one branch per member; the path up to the union is what the user wrote.
    path = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("literal[", "list[")))
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: {path}: {_describe(first)}{more}"


def read_yaml_file(path: Path, what: str = "config") -> Any:
    """The YAML document in `path`, or a one-line ConfigError naming the file (and the line)."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(str(p) for p in chain)}")
    loaded = read_yaml_file(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    base = _read_yaml((path.parent / str(parent)).resolve(), (*chain, path))
    return _deep_merge(base, loaded)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    path, sep, raw = assignment.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"--set {assignment}: expected key.path=value")
    keys = path.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment}: {key} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[keys[-1]] = raw


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`data` (changed in place) with each `key.path=value` override applied, as `--set` does."""
    for assignment in overrides:
        _apply_override(data, assignment)
    return data


def validate_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML config (following `extends`), applies `key.path=value` overrides, validates."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        data = _read_yaml(path.resolve())
        data.setdefault("name", path.stem)
        source = str(path)
    apply_overrides(data, overrides)
    if overrides:
        source = f"{source} with --set"
    return validate_config(data, source)


def dump_config(config: Config) -> str:
    """YAML that `load_config` reads back into an equal Config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
