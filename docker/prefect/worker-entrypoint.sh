#!/bin/bash
# Entrypoint of the prefect-worker service: makes sure the process work pool
# exists and the zombie-run automation is installed (both idempotent), then runs
# the command compose gives (`prefect worker start ...`).
set -euo pipefail

(cd /app && python -m flows.automations)

pool="${PREFECT_WORK_POOL:-local-process}"
if ! prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    prefect work-pool create "$pool" --type process
fi
exec "$@"
