"""Hyperparameters: one dataclass, its presets and its validation, in one place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from .errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the original study's (`seed` preset)."""
    lr: float = 0.001
    momentum: float = 0.9
    gamma: float = 0.1  # StepLR decay factor
    step_size: int = 7  # StepLR period, epochs
    batch_size: int = 12
    epochs: int = 35
    image_size: int = 224
    weight_decay: float = 0.0
    seed: int = 0

    def validate(self) -> "TrainConfig":
        checks = [
            ("lr", self.lr > 0, "a number > 0"),
            ("momentum", 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("gamma", 0 < self.gamma <= 1, "a number in (0, 1]"),
            ("step_size", self.step_size >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("image_size", self.image_size >= 64, "an integer >= 64"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("seed", self.seed >= 0, "an integer >= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise UserError(f"{name} = {getattr(self, name)}: expected {expected}")
        return self

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        return cls(**coerce(d, where))

    def name(self) -> str:
        """Stable folder name from the hyperparameters, e.g. lr0.001_m0.9_g0.1_s7_b12_e35_i224_wd0_seed0."""
        return "_".join(f"{SHORT[f.name]}{_fmt(getattr(self, f.name))}" for f in fields(self))


SHORT = {"lr": "lr", "momentum": "m", "gamma": "g", "step_size": "s", "batch_size": "b", "epochs": "e",
         "image_size": "i", "weight_decay": "wd", "seed": "seed"}
TYPES = {f.name: f.type for f in fields(TrainConfig)}
HYPERPARAMETERS = tuple(TYPES)


def _fmt(v) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def coerce(d: dict, where: str) -> dict:
    """Check keys and types of a hyperparameter dict (from TOML, JSON or a checkpoint)."""
    out = {}
    for key, value in d.items():
        if key not in TYPES:
            raise UserError(f"{where}: unknown key {key!r} (expected one of {', '.join(HYPERPARAMETERS)})")
        want = TYPES[key]
        if want == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{where}: {key} = {value!r}: expected an integer")
        if want == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{where}: {key} = {value!r}: expected a number")
        out[key] = float(value) if want == "float" else value
    return out


# Presets fill defaults; explicit flags override them.
PRESETS: dict[str, TrainConfig] = {
    # The original study's configuration (its best grid cell is lr 0.005, momentum 0.9, gamma 0.1).
    "seed": TrainConfig(),
    # Minutes on a 2-core CPU: 64x64 inputs (the images' native size; AlexNet's stride-4 stem then
    # sees 16x less than at 224) and batch 64 to amortise the 57M-weight update.
    "quick": TrainConfig(lr=0.01, momentum=0.9, gamma=0.1, step_size=6, batch_size=64, epochs=8, image_size=64),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown (expected one of {', '.join(PRESETS)})")
    return PRESETS[name]
