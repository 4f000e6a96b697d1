#!/usr/bin/env bash
# Stop the native stack started by scripts/stack_up.sh: worker, Prefect server,
# MLflow, in that order. Each service is its own process group (Prefect's server
# and MLflow's uvicorn spawn children), so the whole group gets SIGTERM, then
# SIGKILL if it is still alive after a grace period (STACK_STOP_TIMEOUT,
# STACK_WORKER_STOP_TIMEOUT for the worker).
#
#   scripts/stack_down.sh           stop the services, keep data
#   scripts/stack_down.sh --purge   also drop the databases and delete the state dir
set -euo pipefail
# shellcheck source=scripts/stack_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/stack_env.sh"

purge=false
case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    -h | --help)
        sed -n "2,9p" "$0"
        exit 0
        ;;
    *) stack_die "unknown argument '$1' (expected --purge)" ;;
esac

stop_service() {  # service grace_seconds
    local service="$1" grace="$2" pid_file pid deadline
    pid_file="$(stack_pid_file "$service")"
    if [[ ! -f "$pid_file" ]]; then
        stack_log "$service is not running (no pid file)"
        return 0
    fi
    pid="$(<"$pid_file")"
    if [[ ! "$pid" =~ ^[0-9]+$ ]] || ! stack_group_alive "$pid"; then
        stack_log "$service is not running (stale pid file)"
        rm -f "$pid_file"
        return 0
    fi
    # The leader may have died while its children live on; otherwise it must
    # still be our service, not a process that reused the pid.
    if kill -0 "$pid" 2>/dev/null && ! stack_pid_is_service "$service" "$pid"; then
        stack_log "$service is not running (pid $pid now belongs to another program; pid file removed)"
        rm -f "$pid_file"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while stack_group_alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if stack_group_alive "$pid"; then
        stack_log "$service still running ${grace}s after SIGTERM; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pid_file"
    stack_log "stopped $service (process group $pid)"
}

# prefect 3.8.8's worker turns SIGTERM into a SIGINT to itself and then keeps
# polling (seen here with an idle worker), so its grace period is kept short;
# flow runs it started are in its process group and end with it.
stop_service prefect-worker "$STACK_WORKER_STOP_TIMEOUT"
stop_service prefect-server "$STACK_STOP_TIMEOUT"
stop_service mlflow "$STACK_STOP_TIMEOUT"

if [[ "$purge" == true ]]; then
    # Only a directory stack_up.sh created is deleted, whatever STACK_STATE_DIR says;
    # a wrong STACK_STATE_DIR also stops the databases from being dropped.
    if [[ -d "$STACK_STATE_DIR" && ! -f "$STACK_STATE_MARKER" ]]; then
        stack_die "$STACK_STATE_DIR has no $(basename "$STACK_STATE_MARKER"); not purging it or any database."
    fi
    stack_pg_databases drop "$STACK_MLFLOW_DB" "$STACK_MLFLOW_AUTH_DB" "$STACK_PREFECT_DB" \
        || stack_die "could not drop the databases on $STACK_PG_HOST:$STACK_PG_PORT."
    if [[ -d "$STACK_STATE_DIR" ]]; then
        rm -rf -- "$STACK_STATE_DIR"
        stack_log "deleted $STACK_STATE_DIR"
    fi
fi
