"""A Prefect worker killed during a flow run (issue 7, fault 7).

The other half of fault 7, a task failing transiently and being retried, is
tests/integration/test_flow.py::test_transient_io_failure_is_retried (a real refused connection,
the flows' IO_RETRIES policy); it is not repeated here.

A real `prefect server` (own PREFECT_HOME and SQLite database, loopback port), a process work pool,
a deployment of a flow that sleeps 60 s, and `prefect worker start`, all as subprocesses.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from flows.automations import HEARTBEAT_SECONDS, install
from tests.conftest import BIN
from tests.reliability.faults import free_port, kill_group, running, tail, tool_env, wait_for, wait_healthy

pytestmark = pytest.mark.slow

DETECTION_BOUND_SECONDS = 120  # kill -> CRASHED: silence window + 5 s trigger evaluation + slack for a busy machine

FLOW = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    from prefect import flow


    @flow
    def sleepy(marker: str) -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(60)
''')


def test_killed_worker_leaves_the_flow_run_crashed_not_running(tmp_path: Path) -> None:
    """Fault: SIGKILL of the worker's process group while its flow run is RUNNING, then of the flow
    run's own process (the process worker starts it in a session of its own, so the first kill alone
    does not stop it: the run would simply complete); together, what losing the machine does.
    Expected: with flow-run heartbeats on (PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 for the worker) and
    the zombie automation on the server (flows/automations.py, as make stack-up and compose install
    it), the run is marked CRASHED, not left RUNNING.
    Without that automation Prefect 3.8's server leaves it RUNNING indefinitely.
    Tolerance: CRASHED within 120 s of the kill (45 s of silence after the last heartbeat, which
    is at most 30 s old, plus the server's 5 s trigger evaluation).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    flow_dir = tmp_path / "flow"
    flow_dir.mkdir()
    (flow_dir / "sleepy.py").write_text(FLOW)
    marker = tmp_path / "flow-run.pid"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    base = {key: value for key, value in tool_env().items() if not key.startswith("PREFECT_")}
    base.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server_env = {**base, "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
                  "PREFECT_SERVER_UI_ENABLED": "false"}
    worker_env = {**base, "PREFECT_API_URL": api_url, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
                  "PREFECT_WORKER_QUERY_SECONDS": "2"}
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    flow_process: psutil.Process | None = None

    with running([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 tmp_path, server_log, server_env) as server, temporary_settings({PREFECT_API_URL: api_url}):
        server_seconds = wait_healthy(f"{api_url}/health", server, server_log)
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(
                name="reliability", type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
            assert install(client) == "created" and install(client) == "updated"  # idempotent
            assert len(client.read_automations_by_name("crash-zombie-flow-runs")) == 1
            deployment_id = client.create_deployment(
                flow_id=client.create_flow_from_name("sleepy"), name="sleepy", work_pool_name="reliability",
                entrypoint="sleepy.py:sleepy", path=str(flow_dir),
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(flow_dir)}}])
            flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"marker": str(marker)})
            resource = f"prefect.flow-run.{flow_run.id}"

            def state() -> str:
                found = client.read_flow_run(flow_run.id).state
                return found.type.value if found else "NONE"

            def heartbeats() -> int:
                return client.read_events(EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                                                      resource=EventResourceFilter(id=[resource])),
                                          limit=10).total  # the client default, 100, exceeds the server max

            try:
                with running([str(BIN / "prefect"), "worker", "start", "--pool", "reliability", "--type", "process"],
                             tmp_path, worker_log, worker_env) as worker:
                    wait_for(lambda: state() == "RUNNING" and marker.is_file(), 300, "the flow run to be RUNNING",
                             interval=1, alive=worker, log=worker_log)
                    flow_process = psutil.Process(int(marker.read_text()))
                    wait_for(heartbeats, 120, "the flow run's first heartbeat event", interval=1, alive=worker,
                             log=worker_log)
                    kill_group(worker)
                    assert worker.returncode == -9
                # Prefect started the flow run in its own session: it outlives the worker.
                assert flow_process.is_running() and state() == "RUNNING"
                flow_process.kill()
                flow_process.wait(timeout=30)
                killed_at = time.monotonic()
                final = wait_for(lambda: state() if state() != "RUNNING" else None, DETECTION_BOUND_SECONDS + 60,
                                 "the flow run to leave RUNNING", interval=2, log=server_log)
                detected = time.monotonic() - killed_at
                run = client.read_flow_run(flow_run.id)
            finally:
                if flow_process is not None and flow_process.is_running():
                    flow_process.kill()
    print(f"\n[fault 7] server up in {server_seconds:.0f}s; worker and flow run killed; flow run {final} after "
          f"{detected:.0f}s: {run.state.message}")
    assert final == "CRASHED", tail(server_log)
    assert "No heartbeat" in (run.state.message or "")
    assert detected <= DETECTION_BOUND_SECONDS
    assert not os.path.exists(f"/proc/{flow_process.pid}") or not flow_process.is_running()
