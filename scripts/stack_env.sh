# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
# Shared settings and helpers for the native (no-Docker) stack: sourced by
# scripts/stack_up.sh and scripts/stack_down.sh, never run on its own.
#
# Every setting below can be overridden from the environment; values in the
# file named by STACK_ENV_FILE (default: the repo's .env, the same file
# `docker compose` reads) fill in whatever the environment leaves unset.
# The stack only ever binds loopback addresses.

STACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --- .env: read as KEY=VALUE data, never executed as shell code -------------
# Only the keys the native stack uses are taken; the rest of .env (compose-only
# settings such as PREFECT_UI_API_URL) would point the native services astray.
STACK_ENV_FILE="${STACK_ENV_FILE:-$STACK_ROOT/.env}"
STACK_ENV_KEYS='^(STACK_[A-Z0-9_]+|MLFLOW_PORT|PREFECT_PORT|MLFLOW_EXTRA_ALLOWED_HOSTS|MLFLOW_ADMIN_USERNAME|MLFLOW_ADMIN_PASSWORD|MLFLOW_FLASK_SERVER_SECRET_KEY|MLFLOW_TRACKING_USERNAME|MLFLOW_TRACKING_PASSWORD|PREFECT_SERVER_API_AUTH_STRING|PREFECT_WORK_POOL|PREFECT_WORKER_NAME)$'
if [[ -f "$STACK_ENV_FILE" ]]; then
    while IFS= read -r _stack_line || [[ -n "$_stack_line" ]]; do
        [[ "$_stack_line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        _stack_key="${BASH_REMATCH[1]}"
        _stack_value="${BASH_REMATCH[2]}"
        [[ "$_stack_key" =~ $STACK_ENV_KEYS ]] || continue
        # Quoted values lose one pair of quotes; unquoted ones a trailing
        # " # comment" and blanks, as docker compose reads them.
        if [[ "$_stack_value" =~ ^\"(.*)\"[[:space:]]*$ || "$_stack_value" =~ ^\'(.*)\'[[:space:]]*$ ]]; then
            _stack_value="${BASH_REMATCH[1]}"
        else
            _stack_value="${_stack_value%%[[:space:]]#*}"
            _stack_value="${_stack_value%"${_stack_value##*[![:space:]]}"}"
        fi
        # The environment wins over the file.
        if [[ -z "${!_stack_key+x}" ]]; then
            printf -v "$_stack_key" '%s' "$_stack_value"
        fi
    done <"$STACK_ENV_FILE"
    unset _stack_line _stack_key _stack_value
fi

# --- where things live --------------------------------------------------------
STACK_STATE_DIR="${STACK_STATE_DIR:-$STACK_ROOT/.stack}"
STACK_BIN_DIR="${STACK_BIN_DIR:-$STACK_ROOT/.venv/bin}"
STACK_PYTHON="${STACK_PYTHON:-$STACK_BIN_DIR/python}"
STACK_MLFLOW_BIN="${STACK_MLFLOW_BIN:-$STACK_BIN_DIR/mlflow}"
STACK_PREFECT_BIN="${STACK_PREFECT_BIN:-$STACK_BIN_DIR/prefect}"
STACK_LOG_DIR="$STACK_STATE_DIR/logs"
STACK_PID_DIR="$STACK_STATE_DIR/pids"
STACK_ARTIFACTS_DIR="${STACK_ARTIFACTS_DIR:-$STACK_STATE_DIR/mlartifacts}"
STACK_AUTH_CONFIG="$STACK_STATE_DIR/mlflow/basic_auth.ini"
STACK_PREFECT_HOME="$STACK_STATE_DIR/prefect-home"
# Written by stack_up.sh; stack_down.sh --purge deletes only a directory that has it.
STACK_STATE_MARKER="$STACK_STATE_DIR/.mlops-stack-state"

# --- PostgreSQL (trust auth on loopback; no password in any URI) ------------
STACK_PG_HOST="${STACK_PG_HOST:-127.0.0.1}"
STACK_PG_PORT="${STACK_PG_PORT:-5432}"
STACK_PG_USER="${STACK_PG_USER:-postgres}"
STACK_MLFLOW_DB="${STACK_MLFLOW_DB:-mlops_mlflow}"
STACK_MLFLOW_AUTH_DB="${STACK_MLFLOW_AUTH_DB:-mlops_mlflow_auth}"
STACK_PREFECT_DB="${STACK_PREFECT_DB:-mlops_prefect}"

# --- network -------------------------------------------------------------------
STACK_HOST="${STACK_HOST:-127.0.0.1}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
# Extra Host headers MLflow accepts, comma-separated (e.g. an SSH-tunnel name).
MLFLOW_EXTRA_ALLOWED_HOSTS="${MLFLOW_EXTRA_ALLOWED_HOSTS:-}"

# --- services ------------------------------------------------------------------
MLFLOW_ADMIN_USERNAME="${MLFLOW_ADMIN_USERNAME:-admin}"
# Seconds a successful basic-auth check is cached. Each check is a deliberately
# slow password hash; with the single MLflow worker used here, password changes
# and deletions made through the API still take effect at once.
STACK_MLFLOW_AUTH_CACHE_TTL="${STACK_MLFLOW_AUTH_CACHE_TTL:-60}"
# MLflow's server-side job runner (GenAI scorers, prompt optimisation) starts
# eight extra processes; CNN training does not use it.
STACK_MLFLOW_JOBS="${STACK_MLFLOW_JOBS:-false}"
PREFECT_WORK_POOL="${PREFECT_WORK_POOL:-local-process}"
PREFECT_WORKER_NAME="${PREFECT_WORKER_NAME:-${PREFECT_WORK_POOL}-worker}"
STACK_PREFECT_UI="${STACK_PREFECT_UI:-true}"
STACK_START_TIMEOUT="${STACK_START_TIMEOUT:-180}"
STACK_STOP_TIMEOUT="${STACK_STOP_TIMEOUT:-20}"
STACK_WORKER_STOP_TIMEOUT="${STACK_WORKER_STOP_TIMEOUT:-10}"

MLFLOW_URL="http://$STACK_HOST:$MLFLOW_PORT"
PREFECT_URL="http://$STACK_HOST:$PREFECT_PORT/api"

# --- helpers -------------------------------------------------------------------
stack_log() { printf '[stack] %s\n' "$*"; }
stack_die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

stack_pid_file() { printf '%s/%s.pid' "$STACK_PID_DIR" "$1"; }
stack_log_file() { printf '%s/%s.log' "$STACK_LOG_DIR" "$1"; }

# True if pid runs the service's command: a pid file outliving a reboot must not
# make us signal whatever process reused the number.
stack_pid_is_service() {  # service pid
    local pattern
    case "$1" in
        mlflow) pattern='mlflow server' ;;
        prefect-server) pattern='prefect server start' ;;
        prefect-worker) pattern='prefect worker start' ;;
        *) return 1 ;;
    esac
    [[ "$(ps -o args= -p "$2" 2>/dev/null)" == *"$pattern"* ]]
}

# Prints the pid recorded for a service if that process is still alive.
# Each service is started as the leader of its own session, so its pid is also
# its process-group id.
stack_running_pid() {
    local pid_file pid
    pid_file="$(stack_pid_file "$1")"
    [[ -f "$pid_file" ]] || return 1
    pid="$(<"$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stack_pid_is_service "$1" "$pid" || return 1
    printf '%s' "$pid"
}

# True while any process of the group is alive (children outlive a dead leader).
stack_group_alive() { kill -0 -- "-$1" 2>/dev/null; }

# Creates or drops PostgreSQL databases through the venv's psycopg2, so the
# stack needs no psql client. Usage: stack_pg_databases create|drop DB...
stack_pg_databases() {
    local action="$1"
    shift
    STACK_PG_ACTION="$action" STACK_PG_HOST="$STACK_PG_HOST" STACK_PG_PORT="$STACK_PG_PORT" \
        STACK_PG_USER="$STACK_PG_USER" "$STACK_PYTHON" - "$@" <<'PY'
import os
import sys

import psycopg2
from psycopg2 import sql

action = os.environ["STACK_PG_ACTION"]
try:
    connection = psycopg2.connect(
        host=os.environ["STACK_PG_HOST"],
        port=os.environ["STACK_PG_PORT"],
        user=os.environ["STACK_PG_USER"],
        dbname="postgres",
        connect_timeout=5,
    )
except psycopg2.OperationalError as error:
    sys.exit(f"cannot reach PostgreSQL: {error}".strip())
connection.autocommit = True  # CREATE/DROP DATABASE refuse to run inside a transaction
with connection.cursor() as cursor:
    for name in sys.argv[1:]:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        exists = cursor.fetchone() is not None
        if action == "create" and not exists:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"[stack] created database {name}")
        elif action == "create":
            print(f"[stack] database {name} already exists")
        elif action == "drop" and exists:
            # FORCE ends the connections a killed server may have left behind.
            cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            print(f"[stack] dropped database {name}")
connection.close()
PY
}
