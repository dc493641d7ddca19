"""The search space of `fertrain tune`: a YAML file naming config paths (the dotted paths of `--set`),
each with the distribution its values are drawn from, checked against the config schema.

    train.optimizer.learning_rate: {float: [0.0005, 0.01], log: true}
    model.dropout: {float: [0.0, 0.5], step: 0.1}
    train.epochs: {int: [10, 30], step: 5}
    model.entry_widths: {categorical: [[16, 32, 64, 128], [32, 64, 128, 256]]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from fertrain.config import Config, load_config, read_yaml_file
from fertrain.errors import ConfigError

KINDS = ("float", "int", "categorical")
_OPTIONS = {"float": {"log", "step"}, "int": {"log", "step"}, "categorical": set()}
# Optuna stores these as they are; any other choice (a list of widths, a mapping) as its YAML text.
_SCALARS = (type(None), bool, int, float, str)
# An int range with at most this many values has every one checked against the schema.
_CHECK_EVERY_INT = 64


def _on_step(value: float) -> float:
    """A stepped float as the step's decimals write it: 0.1 * 3 is 0.30000000000000004."""
    return round(value, 12)


@dataclass(frozen=True)
class Param:
    """One config path and its distribution; `choices` are the config values, for categorical only."""

    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> tuple[Any, ...]:
        """The categorical choices as Optuna records them: the values themselves when all are
        scalars, else each one's YAML text."""
        if all(isinstance(choice, _SCALARS) for choice in self.choices):
            return self.choices
        return tuple(yaml_text(choice) for choice in self.choices)

    def value(self, recorded: Any) -> Any:
        """The config value of a value Optuna recorded for this parameter."""
        if self.kind == "float" and self.step is not None:
            return _on_step(recorded)  # Optuna records low + k * step as it computes it
        if self.kind != "categorical":
            return recorded
        return dict(zip(self.labels, self.choices, strict=True))[recorded]

    def grid(self) -> list[Any]:
        """Every value a grid search tries."""
        if self.kind == "categorical":
            return list(self.labels)
        if self.step is None:
            raise ConfigError(
                f"{self.path}: the grid sampler needs a step for a float range (e.g. step: 0.1), "
                "or categorical values"
            )
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        values = [self.low + i * self.step for i in range(count)]
        return [_on_step(v) for v in values] if self.kind == "float" else values

    def probes(self) -> list[Any]:
        """Config values that together cover what the schema could refuse in this range: its ends
        (every constraint on a number is a bound) or every value of a short int range, and each
        categorical choice."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and (self.high - self.low) // (self.step or 1) < _CHECK_EVERY_INT:
            return list(range(self.low, self.high + 1, self.step or 1))
        return [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"categorical": list(self.choices)}
        spec: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class SearchSpace:
    source: str  # the file, for messages
    params: tuple[Param, ...]

    def to_dict(self) -> dict[str, Any]:
        return {param.path: param.to_dict() for param in self.params}

    def fingerprint(self) -> str:
        """Canonical JSON of the space: a study remembers it, and refuses to continue with another."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def by_path(self) -> dict[str, Param]:
        return {param.path: param for param in self.params}


def yaml_text(value: Any) -> str:
    """`value` as the one line of YAML that `--set path=...` reads back as it is (JSON would write
    1e-05, which YAML 1.1 reads as a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def config_with(
    base: str | Path, overrides: Sequence[str], values: Mapping[str, Any], source: str = ""
) -> Config:
    """The base config with its `--set` overrides, then each path set to its value."""
    sets = [*overrides, *(f"{path}={yaml_text(value)}" for path, value in values.items())]
    try:
        return load_config(base, sets)
    except ConfigError as exc:
        if not source:
            raise
        raise ConfigError(f"{source}: {exc}") from None


def load_space(path: str | Path, base: str | Path, overrides: Sequence[str] = ()) -> SearchSpace:
    """Reads and checks a space file: every path is a config field, every range is well formed,
    and every value the schema could refuse (a range's ends, each choice) is tried on the base config."""
    path = Path(path)
    loaded = read_yaml_file(path, "space")
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(
            f"{path}: expected a mapping of config paths to distributions, e.g. "
            "model.dropout: {float: [0.0, 0.5]}"
        )
    params = tuple(_param(path, str(key), spec) for key, spec in loaded.items())
    for param in params:
        for value in param.probes():
            try:
                config_with(base, overrides, {param.path: value})
            except ConfigError as exc:
                reason = str(exc).split(": ", 1)[-1]
                raise ConfigError(
                    f"{path}: {param.path}: {yaml_text(value)} is refused by the config ({reason})"
                ) from None
    return SearchSpace(str(path), params)


def _param(source: Path, key: str, spec: Any) -> Param:
    where = f"{source}: {key}"
    unknown = _unknown_path(key)
    if unknown:
        raise ConfigError(f"{where}: {unknown}")
    kinds = [kind for kind in KINDS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"{where}: expected one distribution, {{float: [low, high]}} (log: true, step: s), "
            f"{{int: [low, high]}} (step: n) or {{categorical: [values]}}, got {yaml_text(spec)}"
        )
    kind = kinds[0]
    extra = set(spec) - {kind} - _OPTIONS[kind]
    if extra:
        allowed = ", ".join(sorted(_OPTIONS[kind])) or "nothing else"
        raise ConfigError(f"{where}: {kind} takes {allowed}, got {', '.join(sorted(map(str, extra)))}")
    if kind == "categorical":
        choices = spec[kind]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                f"{where}: categorical needs a non-empty list of values, got {yaml_text(choices)}"
            )
        texts = [yaml_text(choice) for choice in choices]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{where}: categorical values repeat: {yaml_text(choices)}")
        return Param(key, kind, choices=tuple(choices))
    return _range(where, key, kind, spec)


def _range(where: str, key: str, kind: str, spec: dict[str, Any]) -> Param:
    number = int if kind == "int" else (int, float)
    bounds = spec[kind]
    if not (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)
    ):
        raise ConfigError(f"{where}: {kind} needs [low, high] ({kind}s), got {yaml_text(bounds)}")
    low, high = bounds if kind == "int" else map(float, bounds)
    if not low < high:
        raise ConfigError(f"{where}: {kind} range [{low}, {high}] is empty or inverted: low must be < high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {yaml_text(log)}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        if not isinstance(step, number) or isinstance(step, bool) or step <= 0:
            raise ConfigError(f"{where}: step must be a positive {kind}, got {yaml_text(step)}")
        if log:
            raise ConfigError(f"{where}: step and log: true do not combine")
        step = step if kind == "int" else float(step)
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _unknown_path(key: str) -> str | None:
    """Why `key` names no config field, or None when it does."""
    section: Any = Config
    for depth, name in enumerate(key.split(".")):
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return f"unknown config path: {'.'.join(key.split('.')[:depth])} has no fields"
        if name not in section.model_fields:
            prefix = ".".join(key.split(".")[:depth])
            where = f"{prefix} has" if prefix else "the config has"
            return f"unknown config path ({where} {', '.join(section.model_fields)})"
        section = section.model_fields[name].annotation
    return None
