"""The params of hyperparameter search: a variant's search space (`models.<variant>.tune`) and the
study settings (`tune`), validated like every other param: a bad range or an unknown key fails when
params.yaml is read, naming the key, before any trial.

Only the models live here (config.py imports them, so every stage depends on this file); drawing a
trial's settings from a space is `pipeline/tune.py`'s work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from pipeline.layers import MAX_WINDOW, ConvLayer, DenseLayer, DropoutLayer, Layer

Optimizer = Literal["adam", "rmsprop", "sgd", "adamw"]
Schedule = Literal["constant", "cosine"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class FloatRange(_Frozen):
    """A continuous range, drawn uniformly or, with `log: true`, uniformly in its logarithm."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low above 0 (got {self.low})")
        return self


class IntRange(_Frozen):
    """Whole numbers from low to high, both included."""

    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


def _within(minimum: float, maximum: float, *, above: bool = False, below: bool = False) -> Callable:
    """A check that a range lies inside the setting's allowed values (the bounds of TrainConfig & co.)."""
    low_sign, high_sign = (">" if above else ">="), ("<" if below else "<=")

    def check(value: FloatRange | IntRange) -> FloatRange | IntRange:
        if (value.low <= minimum if above else value.low < minimum) or (
                value.high >= maximum if below else value.high > maximum):
            raise ValueError(f"the range {value.low}..{value.high} must lie within {low_sign} {minimum} and "
                             f"{high_sign} {maximum}")
        return value

    return check


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"choices repeat: {values}")
    return values


def _choices(minimum: float, maximum: float) -> Callable:
    def check(values: list) -> list:
        _unique(values)
        outside = [value for value in values if not minimum <= value <= maximum]
        if outside:
            raise ValueError(f"choices {outside} are outside {minimum}..{maximum}")
        return values

    return check


Strength = Annotated[FloatRange, AfterValidator(_within(0, 0.5))]
Multipliers = Annotated[list[float], Field(min_length=1), AfterValidator(_choices(0.01, 64))]


class SearchSpace(_Frozen):
    """`models.<variant>.tune`: what a study may change; a setting left out keeps the variant's value.

    The names of the drawn settings (Optuna's params, the MLflow params of each trial) are these keys.
    """

    learning_rate: Annotated[FloatRange, AfterValidator(_within(0, 1, above=True))] | None = None
    batch_size: Annotated[list[int], Field(min_length=1), AfterValidator(_choices(1, 65536))] | None = None
    epochs: Annotated[IntRange, AfterValidator(_within(1, 1000))] | None = None
    optimizer: Annotated[list[Optimizer], Field(min_length=1), AfterValidator(_unique)] | None = None
    lr_schedule: Annotated[list[Schedule], Field(min_length=1), AfterValidator(_unique)] | None = None
    # Augmentation strengths (train.augment), each drawn on its own.
    rotation: Strength | None = None
    translation: Strength | None = None
    zoom: Strength | None = None
    # The architecture: every dropout layer's rate drawn on its own; multipliers of every conv layer's
    # filters and every dense layer's units (rounded, at least 1); one kernel size for every conv layer.
    dropout: Annotated[FloatRange, AfterValidator(_within(0, 1, below=True))] | None = None
    filters_scale: Multipliers | None = None
    units_scale: Multipliers | None = None
    kernel_size: Annotated[list[int], Field(min_length=1), AfterValidator(_choices(1, MAX_WINDOW))] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> SearchSpace:
        if not self.model_fields_set:
            raise ValueError(f"an empty search space; give at least one of {', '.join(type(self).model_fields)}")
        return self

    def check_layers(self, layers: list[Layer], where: str) -> None:
        """Raise ValueError when a key needs a layer type the variant does not have (`where`: its key)."""
        needs = {"dropout": (DropoutLayer, "dropout"), "filters_scale": (ConvLayer, "conv"),
                 "kernel_size": (ConvLayer, "conv"), "units_scale": (DenseLayer, "dense")}
        for key, (layer_type, name) in needs.items():
            if getattr(self, key) is not None and not any(isinstance(layer, layer_type) for layer in layers):
                raise ValueError(f"{where}.{key}: the variant has no {name} layer to change; remove the key")


class TuneConfig(_Frozen):
    """`tune`: how `python -m pipeline tune <variant>` searches (what it searches: models.<variant>.tune)."""

    trials: int = Field(20, ge=1, le=10000)  # default of --trials: trials with a result the study reaches
    # Random draws before TPE models the space; no trial is pruned before this many have completed.
    startup_trials: int = Field(5, ge=0, le=10000)
    warmup_epochs: int = Field(2, ge=0, le=1000)  # a trial is never pruned in its first epochs
    # A RUNNING trial whose process sent no heartbeat for twice this long is failed (a dead worker).
    heartbeat_seconds: int = Field(10, ge=1, le=3600)
    experiment_name: str = Field("cnn-tuning", min_length=1)
