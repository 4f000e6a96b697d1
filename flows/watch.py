"""The cheap data check that makes retraining event-driven: has data.path changed since the last check?

    python -m flows.watch                 # one check; emits the event when the data changed

It lists data.path (names, sizes, modification times or ETags; nothing is downloaded) and, when the
listing changed, emits the Prefect event `cnn-pipeline.data-source.changed`. The `nightly-retrain`
deployment has a trigger on that event (prefect.yaml), besides its cron, and at most one run at a
time: a second event while a retrain runs queues a run that starts after it (and finds nothing new
or the newest images). prefect.yaml also deploys this flow as `watch-data`, every ten minutes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event

from pipeline.config import load_params
from pipeline.versioning import check_for_changes

DATA_CHANGED = "cnn-pipeline.data-source.changed"


def resource_id(root: Path) -> str:
    """The resource the event is about: this project's data source (its directory name)."""
    return f"cnn-pipeline.data-source.{root.name}"


@flow(name="watch-data-source", log_prints=True)
def watch_flow(params_file: str = "params.yaml", root: str = ".") -> dict[str, Any]:
    """Check data.path; emit DATA_CHANGED when its listing differs from the last check's."""
    project = Path(root).resolve()
    config = load_params(project / params_file)
    result = check_for_changes(config.data, project)
    if result["fingerprint"] is None:
        get_run_logger().info("data.source %s does not change; nothing to watch", config.data.source)
    elif result["changed"]:
        emit_event(event=DATA_CHANGED, resource={"prefect.resource.id": resource_id(project),
                                                 "prefect.resource.name": str(config.data.path)},
                   payload={"fingerprint": result["fingerprint"], "previous": result["previous"]})
        get_run_logger().info("%s changed (%s -> %s): emitted %s", config.data.path, result["previous"],
                              result["fingerprint"], DATA_CHANGED)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Check data.path once; emit the data-changed event if it changed.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".")
    arguments = parser.parse_args()
    watch_flow(params_file=arguments.params, root=arguments.root)


if __name__ == "__main__":
    main()
