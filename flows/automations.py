"""The server-side automation every Prefect server of this project needs, installed idempotently.

    python -m flows.automations          # against $PREFECT_API_URL (make stack-up and compose run it)

Prefect 3's open-source server has no built-in detection of a flow run whose process died: a
killed worker or a lost machine leaves the run RUNNING forever, and `concurrency_limit: 1` then
blocks every later retrain. The documented remedy is an automation on flow-run heartbeats: a run
that sent a heartbeat and then neither another one nor a final state within SILENCE_SECONDS is
marked CRASHED. Workers must send heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

HEARTBEAT_SECONDS = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the workers; Prefect 3.8 enforces at least 30
SILENCE_SECONDS = 45  # no heartbeat for this long = zombie; above the heartbeat period, with slack
ZOMBIE_AUTOMATION = "crash-zombie-flow-runs"


def zombie_automation() -> Any:
    """The automation: a heartbeat followed by silence for SILENCE_SECONDS -> the flow run is CRASHED."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="Marks a flow run CRASHED when its heartbeats stop without a final state (installed by "
                    "flows/automations.py).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENCE_SECONDS),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"No heartbeat for {SILENCE_SECONDS}s: the flow run's process is gone")],
    )


def install(client: Any) -> str:
    """Create the automation, or bring an existing one of that name up to date; return what was done."""
    wanted = zombie_automation()
    existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    if not existing:
        client.create_automation(wanted)
        return "created"
    first, *duplicates = existing
    for duplicate in duplicates:  # left by an older, non-idempotent install
        client.delete_automation(duplicate.id)
    client.update_automation(first.id, wanted)
    return "updated"


def main() -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        action = install(client)
    print(f"automation {ZOMBIE_AUTOMATION}: {action} (flow runs silent for {SILENCE_SECONDS}s are marked CRASHED)")


if __name__ == "__main__":
    main()
