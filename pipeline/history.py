"""The champion history: one record per retrain decision of the scheduled flow, and the data growth
behind it (images per class of the previous and the new data version).

`reports/history.jsonl` is this machine's record (git-ignored, like the registry it describes): the
flow appends a line per run, `make demo-continuous` prints it as a table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.io import read_json, write_text
from pipeline.layout import Layout


def data_snapshot(root: Path) -> dict[str, Any]:
    """The ingested data as the last ingest left it: its DVC version (dvc.lock) and images per class.

    Cheap (no hashing): read from dvc.lock and reports/data/ingest.json; empty before the first ingest.
    """
    layout = Layout(root)
    if not layout.ingest_report.is_file():
        return {"data_version": None, "per_class": {}, "images": 0}
    report = read_json(layout.ingest_report)
    per_class: dict[str, int] = {}
    for split in report["splits"].values():
        for name, count in split["per_class"].items():
            per_class[name] = per_class.get(name, 0) + count
    version = None
    lock = root / "dvc.lock"
    if lock.is_file():
        outs = ((yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("ingest", {}).get("outs", []))
        version = next((out["md5"] for out in outs if out.get("path") == "data/raw"), None)
    return {"data_version": version, "per_class": per_class, "images": sum(per_class.values())}


def growth(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Images per class, old -> new version, one row per class (in the new version's order)."""
    names = list(after["per_class"]) + [name for name in before["per_class"] if name not in after["per_class"]]
    return [{"class": name, "before": before["per_class"].get(name, 0), "after": after["per_class"].get(name, 0),
             "added": after["per_class"].get(name, 0) - before["per_class"].get(name, 0)} for name in names]


def growth_markdown(before: dict[str, Any], after: dict[str, Any]) -> str:
    rows = growth(before, after)
    old, new = (before["data_version"] or "none")[:10], (after["data_version"] or "none")[:10]
    lines = [f"Data version `{old}` -> `{new}`: {before['images']:,} -> {after['images']:,} images.", "",
             "| class | " + " | ".join(row["class"] for row in rows) + " |", "|---|" + "---|" * len(rows),
             "| before | " + " | ".join(str(row["before"]) for row in rows) + " |",
             "| after | " + " | ".join(str(row["after"]) for row in rows) + " |",
             "| added | " + " | ".join(f"{row['added']:+d}" for row in rows) + " |"]
    return "\n".join(lines)


def records(root: Path) -> list[dict[str, Any]]:
    path = Layout(root).champion_history
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(root: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Add a record (stamped with the time) to the history; the file is rewritten atomically."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    lines = [json.dumps(existing, sort_keys=True) for existing in records(root)] + [json.dumps(record, sort_keys=True)]
    write_text(Layout(root).champion_history, "\n".join(lines) + "\n")
    return record


def unchanged_since(root: Path, data_version: str | None) -> str | None:
    """When the current data version was first recorded (the time of the last data change), if known."""
    return next((record["time"] for record in records(root) if record.get("data_version") == data_version
                 and data_version is not None), None)


HISTORY_COLUMNS = ("time", "label", "data_version", "images", "decision", "champion", "test_accuracy", "p_value",
                   "reason")


def table(entries: list[dict[str, Any]]) -> str:
    """The history as a markdown table (the demo prints it, the README quotes it)."""
    lines = ["| " + " | ".join(HISTORY_COLUMNS) + " |", "|" + "---|" * len(HISTORY_COLUMNS)]
    for entry in entries:
        images = entry.get("images") or {}
        cells = {
            **entry,
            "label": entry.get("label", ""),
            "data_version": (entry.get("data_version") or "")[:10],
            "images": "/".join(str(images.get(split, "-")) for split in ("train", "val", "test")),
            "champion": f"v{entry['champion']} {entry.get('champion_variant', '')}".strip()
            if entry.get("champion") else "none",
            "test_accuracy": f"{entry['test_accuracy']:.4f}" if entry.get("test_accuracy") is not None else "",
            "p_value": f"{entry['p_value']:.3g}" if entry.get("p_value") is not None else "",
        }
        lines.append("| " + " | ".join(str(cells.get(column, "")) for column in HISTORY_COLUMNS) + " |")
    return "\n".join(lines)
