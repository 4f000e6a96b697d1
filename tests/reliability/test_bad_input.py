"""Bad input, end to end (issue 7, items 8-10; results in docs/reliability.md).

- params.yaml fuzzed with hypothesis: every mutation is either a valid config or a ParamsError
  naming a key of the mutated input; accepted variants build in Keras.
- Corrupted data through the stage CLI (`python -m pipeline ingest|prepare`): exit 2, one message
  naming the file, and data/ keeps its previous complete content with no temporary files left.
- Prediction input of the wrong shape or type, to `predict` (CLI and `predict_folder`) and to a
  registered model served by `mlflow models serve`: a clear 4xx or error, and the server keeps answering.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from PIL import Image

from pipeline.config import ParamsError, PipelineConfig, load_params, parse_params
from pipeline.layers import MAX_FEATURE_MAP_VALUES, MAX_MODEL_PARAMETERS, count_parameters, infer_shapes
from tests.conftest import BIN, REPO, make_project, run, tiny_params

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())
# A longer hunt than the default run: PARAMS_FUZZ_EXAMPLES=20000 pytest tests/reliability -k fuzzed
FUZZ_EXAMPLES = int(os.environ.get("PARAMS_FUZZ_EXAMPLES", "300"))

# =========================================================================== 8. params.yaml fuzzing

# Keys of the schema (a valid key in the wrong place must fail too) and a few near-misses.
KNOWN_KEYS = sorted({
    "seed", "data", "source", "path", "image_height", "image_width", "channels", "class_names", "max_images",
    "prepare", "val_fraction", "train", "epochs", "learning_rate", "batch_size", "augment", "rotation",
    "models", "layers", "type", "filters", "kernel_size", "strides", "padding", "units", "rate", "pool_size",
    "register", "registration", "mlflow", "evaluate", "description", "epoch", "Type", "unit",
})
keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=10),
    st.integers(-3, 3), st.none(), st.booleans(),  # YAML keys need not be strings
)
scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 3, 28, 1024, 1025, 2**31, 2**63, 10**12]),
    st.floats(),  # includes nan, +-inf, subnormals, -0.0
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, 0.5, 1e-9, 0.99999]),
    st.text(max_size=10),
    st.sampled_from(["", "relu", "same", "conv", "flatten", "adam", "idx", "28", "1e3", "nan", ".inf", "null"]),
    st.none(),
    st.booleans(),
)
values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=3),
                                        st.dictionaries(keys, children, max_size=3)), max_leaves=6,
)

# Random layers: mostly of a known type, with values around and beyond their limits.
sizes = st.one_of(st.integers(-2, 40), st.sampled_from([1024, 1025, 2**31, 10**9, 2**40, 2**70]))
pairs = st.one_of(sizes, st.lists(sizes, min_size=1, max_size=3))
activations = st.sampled_from(["relu", "swish", "softmax", "linear", "gelu", "bogus", None])
layer = st.one_of(
    st.fixed_dictionaries({"type": st.just("conv"), "filters": sizes, "kernel_size": pairs},
                          optional={"strides": pairs, "padding": st.sampled_from(["valid", "same", "full"]),
                                    "activation": activations}),
    st.fixed_dictionaries({"type": st.just("pool")},
                          optional={"pool_size": pairs, "strides": st.one_of(pairs, st.none()),
                                    "mode": st.sampled_from(["max", "average", "min"])}),
    st.fixed_dictionaries({"type": st.just("dropout"), "rate": st.one_of(st.floats(-0.5, 1.5), st.floats())}),
    st.just({"type": "flatten"}),
    st.fixed_dictionaries({"type": st.just("global_pool")}, optional={"mode": st.sampled_from(["max", "average"])}),
    st.fixed_dictionaries({"type": st.just("dense"), "units": sizes}, optional={"activation": activations}),
    st.fixed_dictionaries({"type": st.just("activation"), "activation": activations}),
    st.fixed_dictionaries({"type": st.just("zero_padding")},
                          optional={"padding": st.one_of(sizes, st.lists(st.lists(sizes, min_size=2, max_size=2),
                                                                          min_size=2, max_size=2))}),
    st.just({"type": "batch_norm"}),
    st.dictionaries(keys, values, max_size=3),  # not a layer at all
)
# A body, usually closed by a flatten or global_pool so that a good share is valid, then a head.
layer_lists = st.builds(
    lambda body, closing, head: body + closing + head,
    st.lists(layer, max_size=6),
    st.sampled_from([[{"type": "flatten"}], [{"type": "global_pool"}], []]),
    st.lists(layer, max_size=2),
)


# For the (slower) build test: layers that mostly pass validation, a few near the size limits.
small_sizes = st.one_of(st.integers(1, 6), st.sampled_from([13, 28, 100]))
widths = st.one_of(st.integers(1, 48), st.sampled_from([512, 4096, 40_000, 10**6]))
buildable_layer = st.one_of(
    st.fixed_dictionaries({"type": st.just("conv"), "filters": widths, "kernel_size": small_sizes},
                          optional={"strides": st.integers(1, 3), "padding": st.sampled_from(["valid", "same"]),
                                    "activation": activations.filter(lambda name: name != "bogus")}),
    st.fixed_dictionaries({"type": st.just("pool")},
                          optional={"pool_size": st.integers(1, 3), "mode": st.sampled_from(["max", "average"])}),
    st.fixed_dictionaries({"type": st.just("dropout"), "rate": st.floats(0, 0.9)}),
    st.fixed_dictionaries({"type": st.just("dense"), "units": widths}),
    st.fixed_dictionaries({"type": st.just("zero_padding"), "padding": st.integers(0, 40)}),
    st.sampled_from([{"type": "batch_norm"}, {"type": "activation", "activation": "gelu"}]),
)
buildable_layer_lists = st.builds(
    lambda body, closing, head: body + closing + head,
    st.lists(buildable_layer, min_size=1, max_size=5),
    st.sampled_from([[{"type": "flatten"}], [{"type": "global_pool"}]]),
    st.lists(st.fixed_dictionaries({"type": st.just("dense"), "units": widths}), max_size=2),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = []
    for key, value in items:
        found.append((*prefix, key))
        found += _paths(value, (*prefix, key))
    return found


def _parent(raw: dict, path: tuple) -> Any:
    node = raw
    for part in path[:-1]:
        node = node[part]
    return node


def _draw(data: st.DataObject, strategy: st.SearchStrategy, label: str) -> Any:
    # A copy: st.just() hands out the same dict each time, and later edits must not change the strategy.
    return copy.deepcopy(data.draw(strategy, label=label))


def mutate(data: st.DataObject) -> dict:
    """The shipped params.yaml after 0-4 random edits."""
    raw = copy.deepcopy(SHIPPED)
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        operation = data.draw(st.sampled_from(["replace", "delete", "add", "layers", "number", "nudge"]), label="op")
        paths = _paths(raw)
        if operation in ("replace", "delete") and not paths:
            continue
        if operation == "replace":
            path = data.draw(st.sampled_from(paths), label="replace at")
            _parent(raw, path)[path[-1]] = _draw(data, values, "value")
        elif operation == "delete":
            in_dicts = [path for path in paths if isinstance(_parent(raw, path), dict)]
            if not in_dicts:
                continue
            path = data.draw(st.sampled_from(in_dicts), label="delete")
            del _parent(raw, path)[path[-1]]
        elif operation == "add":
            dicts = [()] + [path for path in paths if isinstance(_parent(raw, (*path, None)), dict)]
            path = data.draw(st.sampled_from(dicts), label="add under")
            _parent(raw, (*path, None))[data.draw(keys, label="new key")] = _draw(data, values, "value")
        elif operation == "layers" and isinstance(raw.get("models"), dict):
            names = [*sorted(str(name) for name in raw["models"]), "new_variant"]
            name = data.draw(st.sampled_from(names), label="variant")
            variant = raw["models"].get(name)
            variant = dict(variant) if isinstance(variant, dict) else {}
            variant["layers"] = _draw(data, st.one_of(layer_lists, buildable_layer_lists), "layers")
            raw["models"][name] = variant
        elif operation in ("number", "nudge"):
            numbers = [path for path in paths if type(_parent(raw, (*path, None))) in (int, float)]
            if numbers:
                path = data.draw(st.sampled_from(numbers), label="number at")
                old = _parent(raw, path)[path[-1]]
                if operation == "number":  # an edge: sign, zero, scale, fraction, overflow, nan/inf
                    new = data.draw(st.sampled_from([-old, 0, old * 10**6, old + 0.5, old - 1, 2**63,
                                                     float("nan"), float("inf")]), label="number")
                else:  # a plausible edit, usually still valid
                    factor = data.draw(st.sampled_from([0.5, 0.9, 1.1, 2]), label="factor")
                    new = type(old)(old * factor) if isinstance(old, float) else max(1, round(old * factor))
                _parent(raw, path)[path[-1]] = new
    return raw


def _render(prefix: str, key: Any) -> str:
    """A key as pipeline.config._key_path writes it."""
    if isinstance(key, int):  # bool too: pydantic reports True as 1
        return f"{prefix}[{int(key)}]"
    name = str(key) if str(key).isprintable() else repr(str(key))
    return f"{prefix}.{name}" if prefix else name


def key_paths(node: Any, prefix: str = "") -> set[str]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found: set[str] = set()
    for key, value in items:
        path = _render(prefix, key)
        found |= {path} | key_paths(value, path)
    return found


def assert_names_a_key(message: str, raw: dict) -> None:
    """Some line of the error names a key path of `raw`, or a required key missing under one."""
    existing = key_paths(raw)
    lines = [line.removeprefix("  - ").removeprefix("(top level): ") for line in message.splitlines()[1:]]
    assert lines, message
    for line in lines:
        if any(line.startswith(path) and line[len(path):len(path) + 1] in (":", " ") for path in existing):
            return
        if line.endswith(": Field required"):
            key = line.removesuffix(": Field required")
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            if parent == "" or parent in existing:
                return
    raise AssertionError(f"no line of the error names a key of the input:\n{message}")


SCHEMA_VALIDATOR = Draft202012Validator(PipelineConfig.model_json_schema(by_alias=True))


def assert_valid(config: PipelineConfig) -> None:
    """What `parse_params` accepts is consistent, finite, within the documented ranges and buildable."""
    dumped = config.model_dump(by_alias=True)
    assert PipelineConfig.model_validate(dumped) == config  # re-validating the dump: the same object

    def finite(node: Any) -> None:
        if isinstance(node, dict):
            for child in node.values():
                finite(child)
        elif isinstance(node, (list, tuple)):
            for child in node:
                finite(child)
        elif isinstance(node, float):
            assert math.isfinite(node), dumped

    finite(dumped)
    # The ranges the models document (Field ge/le/gt/lt, Literal choices) hold for the dump.
    errors = [error.message for error in SCHEMA_VALIDATOR.iter_errors(config.model_dump(mode="json", by_alias=True))]
    assert not errors, errors
    input_shape = (config.data.image_height, config.data.image_width, config.data.channels)
    num_classes = len(config.data.class_names) if config.data.class_names else 10
    for variant in config.models.values():
        shapes = infer_shapes(variant.layers, input_shape)
        assert all(math.prod(shape) <= MAX_FEATURE_MAP_VALUES for shape in shapes)
        assert count_parameters(variant.layers, input_shape, num_classes) <= MAX_MODEL_PARAMETERS


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_params_are_valid_or_name_the_key(data: st.DataObject) -> None:
    raw = mutate(data)
    try:
        config = parse_params(copy.deepcopy(raw))
    except ParamsError as error:  # any other exception type fails the test
        event("ParamsError")
        assert_names_a_key(str(error), raw)
        return
    event("accepted")
    assert_valid(config)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(data=st.data())
def test_accepted_random_variants_build_in_keras(data: st.DataObject) -> None:
    import keras

    from pipeline.models import build_model

    raw = copy.deepcopy(SHIPPED)
    raw["models"] = {"fuzzed": {"layers": _draw(data, buildable_layer_lists, "layers")}}
    if data.draw(st.booleans(), label="rgb 32x24"):
        raw["data"].update(source="folder", path="images", image_height=32, image_width=24, channels=3)
    try:
        config = parse_params(raw)
    except ParamsError:
        event("rejected by validation")
        assume(False)
    variant = config.variant("fuzzed")
    input_shape = (config.data.image_height, config.data.image_width, config.data.channels)
    keras.backend.clear_session()
    model = build_model(variant.layers, input_shape, 10, name="fuzzed",
                        augment=config.variant("fuzzed").train.augment)
    assert model.output_shape == (None, 10)
    assert model.count_params() == count_parameters(variant.layers, input_shape, 10)


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (lambda raw: raw["train"].update(learning_rate=float("nan")), "train.learning_rate", "finite number"),
        (lambda raw: raw["data"].update(download_timeout_seconds=float("inf")), "data.download_timeout_seconds",
         "finite number"),
        (lambda raw: raw["models"]["three_conv"]["layers"][6].update(units=10**6), "models.three_conv.layers",
         "limit of 50,000,000"),
        (lambda raw: raw["models"]["three_conv"]["layers"][0].update(filters=10**9), "models.three_conv.layers[0]",
         "values per image"),
        (lambda raw: raw["models"]["three_conv"]["layers"][0].update(strides=2**40, padding="same"),
         "models.three_conv.layers[0]", "between 1 and 1024"),
        (lambda raw: raw["models"].update({7: raw["models"]["three_conv"]}), "models[7]", "valid string"),
        (lambda raw: raw["models"]["three_conv"]["layers"][0].update(kernel_size=[3, 3, 3]),
         "models.three_conv.layers[0].kernel_size:", "at most 2 items"),
    ],
    ids=["nan-learning-rate", "inf-timeout", "huge-dense", "huge-feature-map", "huge-stride", "int-variant-name",
         "three-kernel-dims"],
)
def test_examples_the_fuzzer_found(edit: Callable[[dict], None], key: str, fragment: str) -> None:
    """Each was accepted (or badly reported) before the fix; kept as readable regression cases."""
    raw = copy.deepcopy(SHIPPED)
    edit(raw)
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert key in str(caught.value) and fragment in str(caught.value)


# =========================================================================== 9. corrupted data

TINY_VARIANT = ("three_conv",)


def tree(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` (relative names), {} when it does not exist."""
    if not directory.exists():
        return {}
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def leftovers(project: Path) -> list[str]:
    """Temporary files or directories (.name.xxxx) the atomic writers might leave behind."""
    found = []
    for directory in (project / "data", project / "data" / "raw", project / "data" / "prepared",
                      project / "reports" / "data"):
        if directory.is_dir():
            found += [str(path) for path in directory.iterdir()
                      if path.name.startswith(".") and path.name not in (".gitignore",)]
    return found


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after a good ingest and prepare: the 'previous complete content'."""
    from pipeline.ingest import run_ingest
    from pipeline.prepare import run_prepare

    project = make_project(tmp_path_factory.mktemp("bad_data") / "base", tiny_params(TINY_VARIANT))
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    return project


def write_idx(path: Path, array: np.ndarray, magic_dims: int | None = None) -> Path:
    dims = array.ndim if magic_dims is None else magic_dims
    header = struct.pack(">HBB", 0, 0x08, dims) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())
    return path


def idx_dir(directory: Path, train_shape: tuple[int, int] = (28, 28), test_shape: tuple[int, int] = (28, 28)) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (40, *train_shape)))
    write_idx(directory / "train-labels-idx1-ubyte", np.arange(40) % 10)
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, *test_shape)))
    write_idx(directory / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    return directory


def csv_file(path: Path, edit: Callable[[list[list[str]]], None] | None = None, rows: int = 40) -> Path:
    rng = np.random.default_rng(1)
    table = [["label", *(f"pixel{index}" for index in range(784))]]
    table += [[str(row % 10), *map(str, rng.integers(0, 256, 784))] for row in range(rows)]
    if edit:
        edit(table)
    path.write_text("\n".join(",".join(row) for row in table) + "\n")
    return path


def image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(2)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / name / f"{index}.png")
    return root


def _truncate(path: Path, count: int) -> None:
    path.write_bytes(path.read_bytes()[:-count])


def _set_cell(row: int, column: int, value: str) -> Callable[[list[list[str]]], None]:
    def edit(table: list[list[str]]) -> None:
        table[row][column] = value  # row 0 is the header, column 0 the label

    return edit


# The bad data lives in the project, under data/source/ (where ingest reads it directly: in-project data
# is versioned with `dvc add`, no import step between the files and the stage).
BAD_DIR = "data/source"
IDX = {"source": "idx", "path": f"{BAD_DIR}/idx"}
CSV = {"source": "csv", "path": f"{BAD_DIR}/digits.csv"}
FOLDER = {"source": "folder", "path": f"{BAD_DIR}/pets"}


def idx_truncated(bad: Path) -> dict:
    _truncate(idx_dir(bad / "idx") / "train-images-idx3-ubyte", 100)
    return IDX


def idx_wrong_magic(bad: Path) -> dict:
    (idx_dir(bad / "idx") / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04" + bytes(64))  # a zip, say
    return IDX


def idx_3_dim_labels(bad: Path) -> dict:
    write_idx(idx_dir(bad / "idx") / "train-labels-idx1-ubyte", np.zeros((40, 1, 1)))
    return IDX


def idx_27x28_images(bad: Path) -> dict:
    idx_dir(bad / "idx", train_shape=(27, 28), test_shape=(27, 28))
    return IDX


def idx_test_size_differs(bad: Path) -> dict:
    idx_dir(bad / "idx", test_shape=(27, 28))
    return IDX


def idx_corrupt_gzip(bad: Path) -> dict:
    directory = idx_dir(bad / "idx")
    (directory / "train-labels-idx1-ubyte").unlink()
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return IDX


def csv_with(edit: Callable[[list[list[str]]], None], **data: Any) -> Callable[[Path], dict]:
    def build(bad: Path) -> dict:
        csv_file(bad / "digits.csv", edit)
        return {**CSV, **data}

    return build


def csv_zero_bytes(bad: Path) -> dict:
    (bad / "digits.csv").write_bytes(b"")
    return CSV


def folder_with(extra: Callable[[Path], Any]) -> Callable[[Path], dict]:
    def build(bad: Path) -> dict:
        extra(image_folder(bad / "pets"))
        return FOLDER

    return build


# case -> (builds the bad data under BAD_DIR and returns the `data` block, what the error names, what it says)
CORRUPTIONS: dict[str, tuple[Callable[[Path], dict], str, str]] = {
    "idx-truncated": (idx_truncated, "idx/train-images-idx3-ubyte", "truncated"),
    "idx-wrong-magic": (idx_wrong_magic, "idx/t10k-images-idx3-ubyte",
                        "wrong magic number 0x504b0304, expected 0x00000803"),
    "idx-3-dim-labels": (idx_3_dim_labels, "idx/train-labels-idx1-ubyte",
                         "wrong magic number 0x00000803, expected 0x00000801"),
    "idx-27x28-images": (idx_27x28_images, "idx/train-images-idx3-ubyte",
                         "images are (27, 28, 1) (H, W, C) but params declare (28, 28, 1)"),
    "idx-test-size-differs": (idx_test_size_differs, "idx/t10k-images-idx3-ubyte", "they must match"),
    "idx-corrupt-gzip": (idx_corrupt_gzip, "idx/train-labels-idx1-ubyte.gz", "cannot read"),
    "csv-text-in-pixel": (csv_with(_set_cell(3, 5, "dark")), "digits.csv",
                          "line 4, column 'pixel4' is not a number: 'dark'"),
    "csv-empty-cell": (csv_with(_set_cell(7, 100, "")), "digits.csv", "line 8, column 'pixel99' is empty (NaN)"),
    "csv-nan-text": (csv_with(_set_cell(2, 1, "NaN")), "digits.csv", "line 3, column 'pixel0' is empty (NaN)"),
    "csv-inf": (csv_with(_set_cell(2, 0, "inf")), "digits.csv", "line 3, column 'label' is not finite"),
    "csv-label-out-of-range": (csv_with(_set_cell(5, 0, "11"), class_names=[str(digit) for digit in range(10)]),
                               "digits.csv", "label 11 is outside 0..9"),
    "csv-negative-label": (csv_with(_set_cell(5, 0, "-1")), "digits.csv", "labels must lie in 0..9999"),
    "csv-zero-bytes": (csv_zero_bytes, "digits.csv", "not a readable CSV"),
    "csv-ragged-row": (csv_with(lambda table: table[4].extend(["1", "2"])), "digits.csv",
                       "Expected 785 fields in line 5, saw 787"),
    "folder-empty-class": (folder_with(lambda root: (root / "bird").mkdir()), "pets/bird", "empty class folder"),
    "folder-zero-byte-png": (folder_with(lambda root: (root / "dog" / "empty.png").write_bytes(b"")),
                             "pets/dog/empty.png", "not a readable PNG/JPEG image"),
    "folder-image-of-another-size": (
        folder_with(lambda root: Image.fromarray(np.zeros((30, 27), np.uint8)).save(root / "cat" / "big.png")),
        "pets/cat/big.png", "image is 27x30 (width x height), expected 28x28"),
    "folder-text-as-png": (folder_with(lambda root: (root / "cat" / "notes.png").write_text("not an image")),
                           "pets/cat/notes.png", "not a readable PNG/JPEG image"),
}


def _copy_project(base: Path, destination: Path) -> Path:
    shutil.copytree(base, destination, symlinks=True)
    return destination


def _point_params_at(project: Path, data_block: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    data = {key: value for key, value in params["data"].items() if key != "max_images"}
    data.update(data_block)
    params["data"] = data
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _assert_clean_failure(result: subprocess.CompletedProcess, names: str, says: str) -> None:
    """Exit code 2 and one `error:` message naming the input (TensorFlow may log lines before it)."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [index for index, line in enumerate(result.stderr.splitlines()) if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    message = "\n".join(result.stderr.splitlines()[errors[0]:])
    assert names in message and says in message, result.stderr


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


# Damage to data/raw between the stages -> `prepare` fails naming the file.
RAW_CORRUPTIONS: dict[str, tuple[Callable[[Path], Any], str, str]] = {
    "truncated-npy": (lambda raw: _truncate(raw / "x_train.npy", 1000), "x_train.npy", "unreadable array"),
    "float-images-with-nan": (
        lambda raw: _save_npy(raw / "x_train.npy", np.where(np.load(raw / "x_train.npy") > 128, np.nan, 0.0)),
        "x_train.npy", "expected uint8 images (N, H, W, C), found float64"),
    "label-out-of-range": (
        lambda raw: _save_npy(raw / "y_train.npy", np.load(raw / "y_train.npy") + 3),
        "y_train.npy", "labels must lie in 0..9 (10 classes in meta.json), found 3..12"),
    "meta-not-json": (lambda raw: (raw / "meta.json").write_text("{class_names: [0"), "meta.json", "unreadable"),
}
OUTPUTS = ("data/raw", "data/prepared", "reports/data")


@dataclass
class StageRun:
    project: Path
    before: dict[str, dict[str, str]]  # OUTPUTS -> {file: sha256} before the failing run
    result: subprocess.CompletedProcess

    def after(self) -> dict[str, dict[str, str]]:
        return {name: tree(self.project / name) for name in OUTPUTS}


# `python -m pipeline <stage>` for many projects at the cost of one interpreter start-up: the imports
# happen once, then each run is a fork that does exactly what `python -m pipeline` does (runpy), with its
# own working directory, stdout/stderr files and exit status. (Forked from a fresh interpreter, never
# from pytest's, which may hold TensorFlow threads.)
FORKING_RUNNER = r"""
import json, os, runpy, sys
import pipeline.cli, pipeline.ingest, pipeline.prepare, pipeline.sources  # the expensive part, once
results = {}
for case, job in json.loads(sys.stdin.read()).items():
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = ["pipeline", *job["args"]]
        code = 1
        try:
            runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    results[case] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(results))
"""


def run_stages(jobs: dict[str, tuple[str, Path]], logs: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run `python -m pipeline <stage>` in each project (see FORKING_RUNNER); case -> completed process."""
    logs.mkdir(parents=True, exist_ok=True)
    spec = {case: {"cwd": str(project), "args": [stage], "stdout": str(logs / f"{case}.out"),
                   "stderr": str(logs / f"{case}.err")} for case, (stage, project) in jobs.items()}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    runner = subprocess.run([str(BIN / "python"), "-c", FORKING_RUNNER], input=json.dumps(spec), cwd=REPO,
                            capture_output=True, text=True, timeout=600, env=env, check=False)
    assert runner.returncode == 0, runner.stderr
    codes = json.loads(runner.stdout.strip().splitlines()[-1])
    return {case: subprocess.CompletedProcess(["python", "-m", "pipeline", jobs[case][0]], codes[case],
                                              Path(spec[case]["stdout"]).read_text(),
                                              Path(spec[case]["stderr"]).read_text())
            for case in jobs}


@pytest.fixture(scope="module")
def stage_runs(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, StageRun]:
    """Every corruption in a project copy of its own, its stage run through the CLI."""
    root = tmp_path_factory.mktemp("stage_runs")
    jobs: dict[str, tuple[str, Path]] = {}
    for case, (build, _, _) in CORRUPTIONS.items():
        project = _copy_project(ingested, root / case)
        (project / BAD_DIR).mkdir(parents=True, exist_ok=True)
        _point_params_at(project, build(project / BAD_DIR))
        jobs[case] = ("ingest", project)
    for case, (damage, _, _) in RAW_CORRUPTIONS.items():
        project = _copy_project(ingested, root / f"raw-{case}")
        damage(project / "data" / "raw")
        jobs[f"raw-{case}"] = ("prepare", project)
    # A first ingest that fails: no data/raw may appear at all. Run cold, as DVC runs a stage.
    fresh = make_project(root / "first-ingest", tiny_params(TINY_VARIANT))
    (fresh / BAD_DIR).mkdir(parents=True, exist_ok=True)
    _truncate(idx_dir(fresh / BAD_DIR / "idx") / "t10k-labels-idx1-ubyte", 1)
    _point_params_at(fresh, IDX)

    before = {case: {name: tree(project / name) for name in OUTPUTS} for case, (_, project) in jobs.items()}
    results = run_stages(jobs, root / "logs")
    runs = {case: StageRun(jobs[case][1], before[case], results[case]) for case in jobs}
    runs["first-ingest"] = StageRun(fresh, {name: {} for name in OUTPUTS},
                                    run(["python", "-m", "pipeline", "ingest"], fresh, check=False, timeout=300))
    return runs


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_source_fails_ingest_naming_the_file(stage_runs: dict[str, StageRun], case: str) -> None:
    _, names, says = CORRUPTIONS[case]
    stage = stage_runs[case]
    _assert_clean_failure(stage.result, names, says)
    assert stage.after() == stage.before, "a failed ingest changed the previous outputs"
    assert not leftovers(stage.project)


def test_failed_first_ingest_leaves_no_output(stage_runs: dict[str, StageRun]) -> None:
    stage = stage_runs["first-ingest"]
    _assert_clean_failure(stage.result, "idx/t10k-labels-idx1-ubyte", "truncated")
    assert not (stage.project / "data" / "raw").exists() and not leftovers(stage.project)


@pytest.mark.parametrize("case", sorted(RAW_CORRUPTIONS))
def test_corrupted_raw_data_fails_prepare_naming_the_file(stage_runs: dict[str, StageRun], case: str) -> None:
    _, names, says = RAW_CORRUPTIONS[case]
    stage = stage_runs[f"raw-{case}"]
    _assert_clean_failure(stage.result, f"data/raw/{names}", says)
    assert stage.after() == stage.before, "a failed prepare changed the previous outputs"
    assert not leftovers(stage.project)


# =========================================================================== 10. prediction input

MODEL_NAME = "mnist-cnn"
SERVED_DIGITS = 16  # test images sent to the served model


@dataclass
class Champion:
    """A project with one tiny registered model as `champion`, and `mlflow models serve` of it starting."""

    project: Path
    server: subprocess.Popen
    url: str
    server_log: Path
    class_names: list[str]
    expected: np.ndarray  # the trained model's probabilities for the first test images, in this process

    def wait_until_serving(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.server.poll() is None, f"mlflow models serve exited:\n{self.server_log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer on /ping within {timeout} s"
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def champion(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Champion]:
    """One model, 1 epoch on the few hundred ingested images, registered with its sha256 (as `register`
    does); the server starts at once, on loopback as in test_registry.py, and loads while `predict` is tested."""
    from pipeline import tracking
    from pipeline.dataset import load_prepared
    from pipeline.lineage import file_sha256
    from tests.conftest import fit

    project = _copy_project(ingested, tmp_path_factory.mktemp("champion") / "project")
    config = load_params(project / "params.yaml")
    data = load_prepared(project)
    experiment_id = tracking.setup(project, config.mlflow.experiment_name)
    with tempfile.TemporaryDirectory() as scratch:
        model = fit(config, "three_conv", data, Path(scratch)).model
        with tracking.training_run(experiment_id, "tiny", {"variant": "three_conv"}) as run_id:
            uri = tracking.log_keras_model(model, data.class_names)
        expected = np.asarray(model.predict(as_float(data.x_test[:SERVED_DIGITS]), verbose=0))
        sha256 = file_sha256(tracking.download_model_file(uri, Path(scratch) / "download"))
    version = tracking.register_version(uri, MODEL_NAME, {"run_id": run_id, "model_sha256": sha256,
                                                          "class_names": json.dumps(data.class_names)})
    tracking.set_alias(MODEL_NAME, "champion", version)

    port = _free_port()
    server_log = project / "serve.log"  # a file, not a pipe: error bodies echo the input, a pipe would fill
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(server_log, "w") as log:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Champion(project, server, f"http://127.0.0.1:{port}", server_log, data.class_names, expected)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _digit_folder(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"digit_{index}.png")
    return folder


def _with_short_image(folder: Path) -> Path:
    Image.fromarray(np.zeros((20, 28), np.uint8)).save(_digit_folder(folder) / "short.png")
    return folder


def _with_text_as_png(folder: Path) -> Path:
    (_digit_folder(folder) / "notes.png").write_text("hello")
    return folder


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


def _only_text(folder: Path) -> Path:
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    return folder


# case -> (builds the folder at the given path, what the error names, what it says)
PREDICT_INPUTS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "image-of-another-size": (_with_short_image, "short.png", "image is 28x20 (width x height), expected 28x28"),
    "non-image-file": (_with_text_as_png, "notes.png", "not a readable PNG/JPEG image"),
    "empty-folder": (_empty, "empty-folder", "holds no .png/.jpg/.jpeg files"),
    "only-other-files": (_only_text, "only-other-files", "holds no .png/.jpg/.jpeg files"),
    "missing-folder": (lambda folder: folder, "missing-folder", "is not a folder of images"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PREDICT_INPUTS))
def test_predict_folder_names_the_bad_input(champion: Champion, tmp_path: Path, case: str) -> None:
    from pipeline.predict import predict_folder
    from pipeline.sources import DataError

    build, names, says = PREDICT_INPUTS[case]
    folder = build(tmp_path / case)
    with pytest.raises(DataError) as caught:
        predict_folder(load_params(champion.project / "params.yaml"), folder, champion.project)
    assert names in str(caught.value) and says in str(caught.value)


@pytest.mark.slow
def test_predict_cli_exits_2_naming_the_bad_input(champion: Champion, tmp_path: Path) -> None:
    # Started together. Only the wrong size needs the model (its input shape is the expected size); the
    # others fail on the folder listing and image headers, before TensorFlow is imported.
    cases = ("image-of-another-size", "non-image-file", "empty-folder")
    folders = {case: PREDICT_INPUTS[case][0](tmp_path / case) for case in cases}
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes = {case: subprocess.Popen(["python", "-m", "pipeline", "predict", str(folders[case])],
                                        cwd=champion.project, env=environment, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                 for case in cases}
    for case, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        _assert_clean_failure(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
                              *PREDICT_INPUTS[case][1:])


JSON = {"Content-Type": "application/json"}


def png_base64(pixels: np.ndarray) -> str:
    """An image (H, W) or (H, W, 1) of uint8 as the base64 text of a PNG, as a client sends it."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8).reshape(pixels.shape[:2])).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def images_request(texts: list[str]) -> dict[str, Any]:
    return {"json": {"dataframe_split": {"columns": ["image"], "data": [[text] for text in texts]}}}


def as_float(images: np.ndarray) -> np.ndarray:
    """The prepared uint8 images as the model takes them: float32 in [0, 1] (the pipeline's normalisation)."""
    from pipeline.dataset import normalise

    return normalise(images)


# case -> (request, expected status, what the error says)
BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "wrong-shape": ({"json": {"instances": np.zeros((2, 5, 5, 1)).tolist()}}, 400,
                    "shaped (N, 28, 28, 1) or (N, 28, 28); got shape (2, 5, 5, 1)"),
    "wrong-rank": ({"json": {"instances": [0.5] * 784}}, 400, "got shape (784,)"),
    "strings": ({"json": {"instances": [[[["dark"]] * 28] * 28]}}, 400, "got a pixel array holding 'dark'"),
    "ragged": ({"json": {"instances": [[[[0.0]] * 28] * 27 + [[[0.0]] * 5]]}}, 400, "inhomogeneous shape"),
    "malformed-json": ({"data": '{"instances": [[[[0.1], ', "headers": JSON}, 400, "valid JSON"),
    "empty-body": ({"data": "", "headers": JSON}, 400, "valid JSON"),
    "unknown-field": ({"json": {"pixels": np.zeros((1, 28, 28, 1)).tolist()}}, 400,
                      "exactly one of the input fields"),
    "not-json": ({"data": "pixels please", "headers": {"Content-Type": "text/plain"}}, 415,
                 "only supports the following content types"),
    # Issue 17 #13: 0-255 pixels were taken as 0-1 and answered with probability 1.0. Sent as JSON
    # floats they are still refused; as JSON integers they are read as 0-255 (issue 15 #6).
    "pixels-0-255-as-floats": ({"json": {"instances": np.full((1, 28, 28, 1), 255.0).tolist()}}, 400,
                               "floats in [0, 1]; got values from 255 to 255. Pixels of 0-255 must be sent as "
                               "integers"),
    "integers-above-255": ({"json": {"instances": np.full((1, 28, 28), 300).tolist()}}, 400,
                           "integer pixels in 0-255; got values from 300 to 300"),
    "negative-pixels": ({"json": {"instances": np.full((1, 28, 28, 1), -0.5).tolist()}}, 400,
                        "got values from -0.5 to -0.5"),
    # Issue 15 #6: images as a client has them.
    "png-of-another-size": (images_request([png_base64(np.zeros((28, 28))), png_base64(np.zeros((20, 28)))]), 400,
                            "1 of 2 image(s) in column 'image' cannot be classified:\n  row 1: image is 28x20 "
                            "(width x height), expected 28x28"),
    "not-an-image": (images_request([base64.b64encode(b"%PDF-1.4 not a picture").decode()]), 400,
                     "row 0: not a readable PNG/JPEG image"),
    "not-base64": (images_request(["data:image/png;base64,iVBORw0K"]), 400, "row 0: not base64 text"),
    "empty-batch": ({"json": {"instances": []}}, 400, "the batch is empty"),
    "empty-image-table": (images_request([]), 400, "the batch is empty"),
    "other-column": ({"json": {"dataframe_split": {"columns": ["png"], "data": [["x"]]}}}, 400,
                     "expected one column 'image' of base64 PNG/JPEG images; got columns ['png']"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_served_model_rejects_bad_input_and_keeps_serving(champion: Champion, case: str) -> None:
    from pipeline.dataset import load_prepared

    request, status, says = BAD_REQUESTS[case]
    champion.wait_until_serving()
    answer = requests.post(f"{champion.url}/invocations", timeout=60, **request)
    assert answer.status_code == status, f"{case}: {answer.status_code} {answer.text[:500]}"
    if answer.headers.get("Content-Type", "").startswith("application/json"):
        body = answer.json()
        assert body["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE") and says in body["message"], body
    else:  # 415 comes from the web framework as text
        assert says in answer.text, answer.text
    assert champion.server.poll() is None, "the server died"
    # It still answers a good request: four PNGs of test digits.
    images = load_prepared(champion.project).x_test[:4]
    valid = requests.post(f"{champion.url}/invocations", timeout=60,
                          **images_request([png_base64(image) for image in images]))
    assert valid.status_code == 200, valid.text
    rows = valid.json()["predictions"]
    assert [sorted(row) for row in rows] == [sorted(["class", *champion.class_names])] * 4, rows
    assert all(row["class"] in champion.class_names for row in rows)
    assert np.allclose([sum(row[name] for name in champion.class_names) for row in rows], 1, atol=1e-4)


@pytest.mark.slow
def test_served_model_classifies_pngs_and_pixels_as_the_trained_model_does(champion: Champion) -> None:
    """The same test digits as PNGs, as JSON integers 0-255 (N, H, W) and as floats in [0, 1]: each
    answer is the trained model's own (the served normalisation is the pipeline's), and a digit the
    model gets right comes back as its class name."""
    from pipeline.dataset import load_prepared

    data = load_prepared(champion.project)
    images, labels = data.x_test[:SERVED_DIGITS], data.y_test[:SERVED_DIGITS]
    champion.wait_until_serving()
    requests_by_form = {
        "png": images_request([png_base64(image) for image in images]),
        "uint8": {"json": {"inputs": images[..., 0].tolist()}},
        "float": {"json": {"instances": as_float(images).tolist()}},
    }
    right = champion.expected.argmax(axis=1) == labels
    assert right.any(), "the tiny model classifies none of the test digits; nothing to check the names with"
    for form, request in requests_by_form.items():
        answer = requests.post(f"{champion.url}/invocations", timeout=60, **request)
        assert answer.status_code == 200, f"{form}: {answer.text[:500]}"
        rows = answer.json()["predictions"]
        probabilities = np.array([[row[name] for name in champion.class_names] for row in rows])
        assert np.allclose(probabilities, champion.expected, atol=1e-5), form
        classes = [row["class"] for row in rows]
        assert classes == [champion.class_names[index] for index in champion.expected.argmax(axis=1)], form
        assert [classes[index] for index in np.flatnonzero(right)] == [
            champion.class_names[label] for label in labels[right]], form
    # A batch larger than one forward pass (serving.PREDICT_SLICE) is answered whole and in order.
    large = np.resize(images, (300, *images.shape[1:]))
    answer = requests.post(f"{champion.url}/invocations", json={"inputs": large.tolist()}, timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    probabilities = np.array([[row[name] for name in champion.class_names] for row in answer.json()["predictions"]])
    assert np.allclose(probabilities, champion.expected[np.arange(300) % SERVED_DIGITS], atol=1e-5)


def _mixed_folder(folder: Path) -> Path:
    """Three good digits, one of the wrong size, one decompression bomb, one text file saved as PNG."""
    from tests.unit.test_sources import decompression_bomb

    _with_short_image(folder)
    decompression_bomb(folder / "bomb.png")
    (folder / "notes.png").write_text("hello")
    return folder


@pytest.mark.slow
def test_predict_reports_every_bad_file_before_the_model_is_fetched(champion: Champion, tmp_path: Path) -> None:
    """Issue 17 #12: one wrong-size image aborted the batch after downloading the model and starting
    TensorFlow, naming only itself. Now every file is checked first and all the bad ones are named;
    the tracking store is unreachable here, so reaching the model would fail differently."""
    folder = _mixed_folder(tmp_path / "mixed")
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                   "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"}
    result = subprocess.run(["python", "-m", "pipeline", "predict", str(folder)], cwd=champion.project,
                            env=environment, capture_output=True, text=True, timeout=300, check=False)
    _assert_clean_failure(result, "3 of 6 file(s)", "pass --skip-bad to classify the others")
    for name, says in (("short.png", "expected 28x28"), ("bomb.png", "900000000 pixels"),
                       ("notes.png", "not a readable PNG/JPEG image")):
        assert f"{name}: " in result.stderr and says in result.stderr, (name, result.stderr)
    assert "unreachable" not in result.stderr


@pytest.mark.slow
def test_predict_skip_bad_classifies_the_rest_and_names_the_model(champion: Champion, tmp_path: Path) -> None:
    """Issue 17 #12: with --skip-bad the good images are classified, the bad ones listed on stderr, and
    the version that answered is named."""
    folder = _mixed_folder(tmp_path / "mixed")
    result = run(["python", "-m", "pipeline", "predict", str(folder), "--skip-bad"], champion.project)
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert rows[0] == ["file", "class", "probability"]
    assert [row[0] for row in rows[1:]] == [f"digit_{index}.png" for index in range(3)]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 3 and any("bomb.png" in line for line in skipped), result.stderr
    assert re.search(r"^model: mnist-cnn v\d+ \(models:/mnist-cnn@champion\)$", result.stderr, re.MULTILINE)
