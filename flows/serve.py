"""The nightly retrain without a work pool: one long-running process schedules and runs it.

    python -m flows.serve                               # schedule and parameters of prefect.yaml
    python -m flows.serve --cron "0 */6 * * *" --root /srv/cnn-pipeline

`Flow.serve` registers the deployment `train-cnn-variants/nightly-retrain` and polls for its runs in
this process; each flow run is a subprocess of it. It is the alternative to `prefect deploy` plus
`prefect worker start` (prefect.yaml) on a machine without a work pool, and it uses the same
deployment name: use one or the other against a server. Ctrl-C stops it and pauses the schedule.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.training import training_flow

DEPLOYMENT_NAME = "nightly-retrain"
# The schedule and parameters are defined once, in the deployment of prefect.yaml.
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def deployment_spec(path: Path = PREFECT_YAML, name: str = DEPLOYMENT_NAME) -> dict[str, Any]:
    """The deployment called `name` in a prefect.yaml file.

    Raises:
        ValueError: the file has no such deployment.
    """
    for deployment in yaml.safe_load(path.read_text()).get("deployments") or []:
        if deployment.get("name") == name:
            return deployment
    raise ValueError(f"{path} defines no deployment named {name!r}")


def main() -> None:
    spec = deployment_spec()
    schedule = (spec.get("schedules") or [{}])[0]
    parameters = spec.get("parameters") or {}
    parser = argparse.ArgumentParser(description="Serve the nightly retrain deployment (no work pool needed).")
    parser.add_argument("--cron", default=os.environ.get("PIPELINE_CRON", schedule.get("cron")),
                        help="when to run (default: $PIPELINE_CRON, else prefect.yaml's schedule)")
    parser.add_argument("--timezone", default=os.environ.get("PIPELINE_CRON_TIMEZONE", schedule.get("timezone")),
                        help="IANA time zone of the cron (default: $PIPELINE_CRON_TIMEZONE, else prefect.yaml's)")
    parser.add_argument("--root", default=os.environ.get("PIPELINE_ROOT", parameters.get("root", ".")),
                        help="the project directory (default: $PIPELINE_ROOT, else the current directory)")
    parser.add_argument("--params", default=parameters.get("params_file", "params.yaml"), help="the params file")
    arguments = parser.parse_args()
    if not arguments.cron:
        parser.error(f"no cron schedule: pass --cron or set PIPELINE_CRON ({PREFECT_YAML} has none)")

    root = Path(arguments.root).resolve()  # flow runs are subprocesses; do not depend on their cwd
    if not (root / arguments.params).is_file():
        parser.error(f"{root / arguments.params} does not exist; pass --root (the project directory)")
    training_flow.serve(
        name=DEPLOYMENT_NAME,
        # The slug of prefect.yaml's schedule: the server then updates that schedule in place, and
        # refuses (422) a slugless schedule for a deployment whose schedules have slugs.
        schedules=[Cron(arguments.cron, timezone=arguments.timezone, slug=schedule.get("slug"))],
        parameters={"params_file": arguments.params, "root": str(root)},
        # The data-changed trigger of prefect.yaml (flows/watch.py emits the event), for this root.
        triggers=[DeploymentEventTrigger(**{**{key: value for key, value in trigger.items() if key != "type"},
                                            "parameters": {"params_file": arguments.params, "root": str(root)}})
                  for trigger in spec.get("triggers") or []],
        description=spec.get("description"),
        tags=spec.get("tags"),
        limit=1,  # two retrains at once would write the same DVC outputs
    )


if __name__ == "__main__":
    main()
