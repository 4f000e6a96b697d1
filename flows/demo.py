"""Continuous training as a story anyone can run offline (`make demo-continuous`).

    python -m flows.demo [--dir demo-continuous] [--days 2000,1500,0,1500!,fix]   # from the project directory

A fresh copy of the project whose data.source is a folder of PNG digits in data/source/digits/. Each
"day", new labelled images arrive (taken from the bundled MNIST sample in a fixed random order) and
the nightly flow runs, as the deployment would: it versions the new images with DVC, retrains what
is stale, gates the best variant against the champion and commits the data version to git. The
default story: 2,000 images, then 1,500 more, then nothing new, then 1,500 more that include one
corrupt PNG (the run fails naming it; nothing is replaced), then the fixed batch. At the end it
prints the champion history: day, data version, images per split, decision, champion, test
accuracy, McNemar p, and why.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# A small, quick configuration of the project (two variants, a few epochs): the story, not the scores.
DEMO_PARAMS = {
    "data": {"source": "folder", "path": "data/source/digits", "class_names": [str(digit) for digit in range(10)]},
    "train": {"epochs": 4, "batch_size": 128, "lr_schedule": "cosine"},
    "register": {"min_test_accuracy": 0.5},
    "variants": ["three_conv", "relu_layers"],
}
CORRUPT_NAME = "arrived-corrupt.png"


def demo_params(overrides: dict[str, Any]) -> dict[str, Any]:
    """The project's params.yaml with the demo's data, training and variants."""
    from tests.conftest import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(overrides["data"])
    params["train"].update(overrides["train"])
    params["register"].update(overrides["register"])
    params["models"] = {name: params["models"][name] for name in overrides["variants"]}
    for model in params["models"].values():  # the demo's budget beats a variant's own epochs
        for key in overrides["train"]:
            model.get("train", {}).pop(key, None)
    return params


def write_digits(folder: Path, images: np.ndarray, labels: np.ndarray, first_index: int) -> None:
    """Save digits as PNG files in class folders (`<folder>/<label>/<index>.png`)."""
    from PIL import Image

    for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / str(int(label)) / f"{first_index + offset:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(target)


def run_day(project: Path, label: str, arrivals: dict[str, Any]) -> dict[str, Any]:
    """Let `arrivals` land in data/source/digits, then run the nightly flow once; return what it recorded."""
    from flows.training import training_flow
    from pipeline import history

    folder = project / "data" / "source" / "digits"
    if arrivals.get("fix"):
        for corrupt in folder.rglob(CORRUPT_NAME):
            corrupt.unlink()
    if arrivals.get("count"):
        write_digits(folder, arrivals["images"], arrivals["labels"], arrivals["first_index"])
    if arrivals.get("corrupt"):
        (folder / "7").mkdir(parents=True, exist_ok=True)
        (folder / "7" / CORRUPT_NAME).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    started = time.monotonic()
    recorded = len(history.records(project))
    try:
        training_flow(root=str(project), label=label, commit_to_git=True)
    except Exception:  # a failed day is part of the story when the flow recorded why
        if len(history.records(project)) == recorded:
            raise
    record = history.records(project)[-1]
    print(f"[{label}] {record['decision']} in {time.monotonic() - started:.0f} s: {record['reason']}", flush=True)
    return record


def parse_days(text: str) -> list[dict[str, Any]]:
    """'2000,1500,0,1500!,fix' -> arrivals per day: a count, '!' adds a corrupt PNG, 'fix' removes it."""
    days = []
    for item in text.split(","):
        item = item.strip()
        if item == "fix":
            days.append({"fix": True})
        else:
            days.append({"count": int(item.rstrip("!")), "corrupt": item.endswith("!")})
    return days


def run_demo(directory: Path, days: list[dict[str, Any]], overrides: dict[str, Any] = DEMO_PARAMS,
             seed: int = 0) -> list[dict[str, Any]]:
    """Build the demo project in `directory` (replacing it) and play the days; return the history."""
    from pipeline import history
    from pipeline.sources import read_bundled
    from tests.conftest import make_project

    if directory.exists():
        shutil.rmtree(directory)
    project = make_project(directory, demo_params(overrides))
    bundled = read_bundled()
    order = np.random.default_rng(seed).permutation(bundled.y_train.size)
    arrived = 0
    for number, arrivals in enumerate(days, start=1):
        count = arrivals.get("count", 0)
        if arrived + count > order.size:
            raise ValueError(f"the days ask for {arrived + count} images; the bundled sample has {order.size}")
        chosen = order[arrived:arrived + count]
        run_day(project, f"day {number}", {**arrivals, "images": bundled.x_train[chosen],
                                           "labels": bundled.y_train[chosen], "first_index": arrived})
        arrived += count
    return history.records(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo-continuous"),
                        help="where to build the demo project (replaced if it exists)")
    parser.add_argument("--days", default="2000,1500,0,1500!,fix",
                        help="images arriving each day; '!' adds a corrupt PNG, 'fix' removes it")
    arguments = parser.parse_args()
    # No Prefect server needed: the flow runs against Prefect's temporary local one, given time to
    # start on a busy 2-core machine; nothing is reported to Prefect.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    from pipeline import console, history

    console.quiet_tensorflow()

    started = time.monotonic()
    entries = run_demo(arguments.dir.resolve(), parse_days(arguments.days))
    print("\n" + history.table(entries))
    print(f"\n{len(entries)} days in {time.monotonic() - started:.0f} s; the project is {arguments.dir.resolve()}")


if __name__ == "__main__":
    main()
