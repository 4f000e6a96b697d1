"""params.yaml, parsed once into frozen, validated models.

Every stage reads its settings from here. A wrong key, a wrong type or an impossible value
fails in `load_params` with a message naming the key (``models.three_conv.layers[2].kernel_size``)
and what was expected, before any data is read or any model is built.

About 330 lines because every params.yaml block is declared here, next to the loader that names a
bad key; the layer types are in layers.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ParamsError
from pipeline.layers import LAYER_TYPE_NAMES, LayerSpec, check_model_size, infer_shapes
from pipeline.search_space import SearchSpace, TuneConfig

# Variant names become DVC stage names (train@<name>), directory names and MLflow tags;
# letters, digits and underscores are safe in all three and in `dvc exp run -S`.
VARIANT_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class _Frozen(BaseModel):
    # allow_inf_nan=False: YAML reads `.nan` and `.inf` as floats, and no setting means either.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------- data


class DataConfig(_Frozen):
    """Which images to read (the `ingest` stage)."""

    source: Literal["bundled", "keras", "idx", "csv", "folder"] = "bundled"
    keras_dataset: Literal["mnist", "fashion_mnist"] = "mnist"
    # A directory (idx, folder) or file (csv): in data/source/ (versioned with dvc add), elsewhere on
    # disk or a URL (s3://, https://: imported with dvc import-url); pipeline/versioning.py.
    path: str | None = None
    fs_config: dict[str, str] | None = None  # options of dvc import-url --fs-config, e.g. {endpointurl: ...}
    image_height: int = Field(28, ge=4, le=1024)
    image_width: int = Field(28, ge=4, le=1024)
    channels: Literal[1, 3] = 1
    class_names: list[str] | None = None  # overrides the names a source knows (csv has none)
    max_images: int | None = Field(None, ge=20)  # stratified subsample for quick runs
    # At most an hour; Python's socket timeouts overflow above ~9e9 seconds.
    download_timeout_seconds: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _path_for_local_sources(self) -> DataConfig:
        if self.source in ("idx", "csv", "folder") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if self.source in ("bundled", "keras") and (
            (self.image_height, self.image_width, self.channels) != (28, 28, 1)
        ):
            raise ValueError(
                f"data.source '{self.source}' holds 28x28 grayscale images: set "
                "data.image_height: 28, data.image_width: 28, data.channels: 1"
            )
        return self


class PrepareConfig(_Frozen):
    """How raw images become train / validation / test splits (the `prepare` stage)."""

    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)  # used only when the source has no test split
    max_duplicate_fraction: float = Field(0.01, ge=0, le=1)  # exact duplicates across splits


# --------------------------------------------------------------------------- models


class AugmentConfig(_Frozen):
    """Random shifts/rotations applied to training batches only (Keras preprocessing layers)."""

    rotation: float = Field(0.0, ge=0, le=0.5)  # fraction of a full turn
    translation: float = Field(0.0, ge=0, le=0.5)  # fraction of height/width
    zoom: float = Field(0.0, ge=0, le=0.5)


class TrainConfig(_Frozen):
    """Training settings: global defaults in `train`, overridden per variant."""

    optimizer: Literal["adam", "rmsprop", "sgd", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=1)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    loss: Literal["sparse_categorical_crossentropy", "categorical_crossentropy"] = (
        "sparse_categorical_crossentropy"
    )
    batch_size: int = Field(64, ge=1, le=65536)
    epochs: int = Field(5, ge=1, le=1000)
    early_stopping_patience: int = Field(3, ge=1, le=1000)
    augment: AugmentConfig = AugmentConfig()
    jit_compile: bool = False
    seeds: int = Field(1, ge=1, le=20)  # >1: also train extra seeds to estimate a 95% CI
    # none: one process, no tf.distribute strategy; mirrored: the local devices; multi_worker: the
    # hosts of TF_CONFIG (pipeline/distribute.py). `batch_size` stays the global batch in all three.
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"


class TrainOverrides(_Frozen):
    """Per-variant settings; anything left out comes from the global `train` block."""

    optimizer: Literal["adam", "rmsprop", "sgd", "adamw"] | None = None
    learning_rate: float | None = Field(None, gt=0, le=1)
    lr_schedule: Literal["constant", "cosine"] | None = None
    loss: Literal["sparse_categorical_crossentropy", "categorical_crossentropy"] | None = None
    batch_size: int | None = Field(None, ge=1, le=65536)
    epochs: int | None = Field(None, ge=1, le=1000)
    early_stopping_patience: int | None = Field(None, ge=1, le=1000)
    augment: AugmentConfig | None = None
    jit_compile: bool | None = None
    seeds: int | None = Field(None, ge=1, le=20)
    distribution: Literal["none", "mirrored", "multi_worker"] | None = None


class VariantConfig(_Frozen):
    """One architecture: a layer list (the classifier head is added by the factory)."""

    description: str = ""
    layers: list[LayerSpec] = Field(min_length=1)
    train: TrainOverrides = TrainOverrides()
    tune: SearchSpace | None = None  # what `python -m pipeline tune <variant>` may change


class Variant(_Frozen):
    """One variant as the train stage uses it: name, layers, resolved training settings and seed."""

    name: str
    description: str
    layers: tuple[LayerSpec, ...]
    train: TrainConfig
    seed: int

    def with_seed(self, seed: int) -> Variant:
        return self.model_copy(update={"seed": seed})

    def settings(self) -> dict[str, Any]:
        """Everything of params.yaml that decides this variant's training (logged as the run's params)."""
        # `distribution: none` is left out: the settings (and so params_hash and training.json) of a
        # single-process fit stay what they were before the key existed, as its model bytes do.
        train = self.train.model_dump(mode="json", exclude={"distribution"} if self.train.distribution == "none"
                                      else None)
        return {"seed": self.seed, "train": train,
                "variant": {"name": self.name, "description": self.description,
                            "layers": [layer.model_dump(mode="json") for layer in self.layers]}}

    def params_hash(self) -> str:
        """A short, stable hash of `settings()` without the name (the same settings hash alike)."""
        settings = self.settings()
        settings["variant"] = {"layers": settings["variant"]["layers"]}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint(self, data_version: str) -> str:
        """Identifies one training job: the settings and the data version."""
        return hashlib.sha256(f"{self.params_hash()}:{data_version}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- later stages


class EvaluateConfig(_Frozen):
    gallery_rows: int = Field(4, ge=1, le=10)
    gallery_cols: int = Field(4, ge=1, le=10)
    batch_size: int = Field(512, ge=1, le=65536)


class RegisterConfig(_Frozen):
    model_name: str = Field("mnist-cnn", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    min_test_accuracy: float = Field(0.9, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, lt=1)


class MlflowConfig(_Frozen):
    experiment_name: str = Field("cnn-variants", min_length=1)


class PipelineConfig(_Frozen):
    """The whole of params.yaml."""

    seed: int = Field(42, ge=0, le=2**31 - 1)
    data: DataConfig = DataConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    models: dict[str, VariantConfig] = Field(min_length=1)
    evaluate: EvaluateConfig = EvaluateConfig()
    # `register` would shadow a pydantic BaseModel attribute; the YAML key stays `register`.
    registration: RegisterConfig = Field(RegisterConfig(), alias="register")
    mlflow: MlflowConfig = MlflowConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator("models")
    @classmethod
    def _variant_names(cls, models: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        for name in models:
            if not VARIANT_NAME_PATTERN.match(name):
                raise ValueError(
                    f"variant name {name!r} is not usable as a DVC stage name: use letters, "
                    "digits and underscores, starting with a letter (at most 64 characters)"
                )
        return models

    @model_validator(mode="after")
    def _layers_fit_the_images(self) -> PipelineConfig:
        input_shape = (self.data.image_height, self.data.image_width, self.data.channels)
        # The class count is known here only when data.class_names is set; the digits' 10 otherwise
        # (build_model checks again with the real count).
        num_classes = len(self.data.class_names) if self.data.class_names else 10
        for name, variant in self.models.items():
            infer_shapes(variant.layers, input_shape, where=f"models.{name}.layers")
            check_model_size(variant.layers, input_shape, num_classes, where=f"models.{name}.layers")
            if variant.tune is not None:
                variant.tune.check_layers(variant.layers, where=f"models.{name}.tune")
            train = {**self.train.model_dump(), **{key: value for key, value in variant.train if value is not None}}
            if train["distribution"] == "multi_worker" and train["seeds"] > 1:
                # The extra seeds' fits and their predictions would need every worker in step: not built.
                raise ValueError(f"models.{name}.train: seeds > 1 is not supported with distribution "
                                 "multi_worker; set seeds: 1, or distribution: none or mirrored")
        return self

    def variant(self, name: str) -> Variant:
        """The variant `name`, resolved once: its layers, its training settings (the global `train`
        block with the variant's own overrides applied) and the seed. Stages pass this object down.
        """
        if name not in self.models:
            raise ParamsError(
                f"unknown variant {name!r}; params.yaml `models` has: {', '.join(sorted(self.models))}"
            )
        spec = self.models[name]
        overrides = {key: value for key, value in spec.train if value is not None}
        return Variant(name=name, description=spec.description, layers=tuple(spec.layers),
                       train=self.train.model_copy(update=overrides), seed=self.seed)


# --------------------------------------------------------------------------- loading


# Fields typed `int | tuple[...]`: pydantic adds the failing member ('int', 'tuple[int, int]') to the path.
_UNION_FIELDS = {"kernel_size", "strides", "pool_size", "padding"}


def _key_path(location: tuple[Any, ...]) -> str:
    """('models', 'a', 'layers', 2, 'conv', 'filters') -> 'models.a.layers[2].filters'."""
    text = ""
    previous: Any = None
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            pass  # pydantic's marker for "the key itself" of a mapping entry: the path names it
        elif part in LAYER_TYPE_NAMES and text.endswith("]"):
            pass  # the discriminator tag pydantic inserts for tagged unions
        elif previous in _UNION_FIELDS and (part == "int" or part.startswith("tuple[")):
            pass  # which member of `int | tuple[...]` failed; the message says it
        else:
            name = part if part.isprintable() else repr(part)  # a key with a newline stays on its line
            text += f".{name}" if text else name
        previous = part
    return text


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for item in error.errors():
        key = _key_path(item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see params.yaml in the repository)"
        # A validator of a whole block (variant names, layers vs image size) names the key in its
        # message; repeating the block's input would print all of params.yaml.
        quiet = item["type"] in ("missing", "extra_forbidden") or (
            item["type"] == "value_error" and isinstance(item.get("input"), dict))
        got = "" if quiet else f" (got {item.get('input')!r})"
        lines.append(f"  - {key}: {message}{got}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> PipelineConfig:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source} must be a mapping of keys to values, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source)) from None


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted keys set: {'train.epochs': 1} sets raw['train']['epochs']."""
    merged = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                raise ParamsError(f"override {dotted!r}: {part!r} is not a mapping")
            node = node.setdefault(part, {})
        node[leaf] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping, as DVC does.

    PyYAML keeps the last value silently: `seed: 42` then `seed: 7` would train with 7 while DVC
    refuses the file.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, list | dict):
                continue  # unhashable: the mapping constructor reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}: first on line {seen[key]}, again on line {line}",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _one_line(error: yaml.YAMLError) -> str:
    """PyYAML's message without the quoted source lines it appends: the problem, and where."""
    if not isinstance(error, yaml.MarkedYAMLError) or not error.problem:
        return " ".join(str(error).split())
    context = f"{error.context}; " if error.context else ""
    where = error.problem_mark
    if where is None or "line" in error.problem:
        return f"{context}{error.problem}"
    return f"{context}{error.problem} (line {where.line + 1}, column {where.column + 1})"


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The params file as a mapping; invalid YAML or a repeated key fails naming the line(s)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {_one_line(error)}") from None
    return raw if raw is not None else {}


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read, override and validate a params file."""
    raw = read_params_file(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return parse_params(raw, source=str(path))
