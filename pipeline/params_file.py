"""params.yaml as a file to change: dotted settings written in, keeping its comments and layout, exactly as
`dvc exp run -S` writes them; and the `dvc exp run -S ...` line that sets the same values.

DVC's `-S` loads the file with ruamel.yaml's round-trip loader, applies the overrides to a plain copy,
merges that copy back (mappings recursively, everything else replaced) and dumps with
`default_flow_style=False`. `apply_settings` does the same steps, so applying here or with `-S` gives the
same file (tests/unit/test_params_file.py compares them) and a later `-S` changes only its own lines.
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path
from typing import Any

from pipeline.config import parse_params
from pipeline.errors import ParamsError
from pipeline.io import write_text


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree['a']['b'][0]['c'] = value for 'a.b.0.c', creating missing mappings (not list items)."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value


def _merge(original: dict[str, Any], updated: dict[str, Any]) -> None:
    """DVC's merge_dicts: recurse into mappings present on both sides, replace everything else."""
    for key, value in updated.items():
        if key in original and isinstance(original[key], dict) and isinstance(value, dict):
            _merge(original[key], value)
        else:
            original[key] = value


def apply_settings(path: str | Path, settings: dict[str, Any]) -> str:
    """Write dotted settings ({"models.three_conv.train.epochs": 8}) into the params file.

    The result is validated like any params file before it replaces the old one (atomically).

    Args:
        path: the params file.
        settings: dotted keys (list items by index: "models.v.layers.0.filters") and their values.

    Returns:
        The new text of the file.
    """
    from ruamel.yaml import YAML

    path = Path(path)
    loader = YAML()  # round-trip: keeps comments, key order and flow style of mappings
    document = loader.load(path.read_text())
    updated = _plain(document)
    try:
        for dotted, value in settings.items():
            _set(updated, dotted, value)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
        raise ParamsError(f"{path}: cannot set {dotted}: no such list item or not a mapping ({error!r})") from None
    _merge(document, updated)
    dumper = YAML()
    dumper.default_flow_style = False  # as DVC dumps
    stream = io.StringIO()
    dumper.dump(document, stream)
    text = stream.getvalue()
    parse_params(YAML(typ="safe").load(text), source=str(path))  # never write an invalid file
    write_text(path, text)
    return text


def _has_key(tree: Any, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def set_param_command(settings: dict[str, Any], raw_params: dict[str, Any]) -> str:
    """The `dvc exp run -S ...` line that sets `settings`; a key params.yaml does not have yet gets
    DVC's `+` (add) prefix, as `-S` requires."""
    options = [f"-S {shlex.quote(('' if _has_key(raw_params, key) else '+') + key + '=' + _hydra_value(value))}"
               for key, value in settings.items()]
    return " ".join(["dvc exp run", *options])
