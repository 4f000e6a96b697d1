#!/usr/bin/env bash
# Start the native stack on loopback: MLflow (basic-auth, PostgreSQL backend,
# proxied local artifacts), Prefect server (PostgreSQL) and one Prefect process
# worker. The same topology as docker-compose.yml, without Docker.
#
# Required environment (or .env): MLFLOW_ADMIN_PASSWORD,
# MLFLOW_FLASK_SERVER_SECRET_KEY, PREFECT_SERVER_API_AUTH_STRING ("user:password").
# Everything else has a default in scripts/stack_env.sh.
# Running it again while the stack is up only re-checks health.
set -euo pipefail
# shellcheck source=scripts/stack_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/stack_env.sh"

# MLflow's basic-auth app used to create admin/password1234 on first start;
# anyone who read the docs knows it, so it is refused outright.
readonly MLFLOW_DEFAULT_ADMIN_PASSWORD="password1234"

# --- refuse unsafe configuration before touching anything ---------------------
require_secret() {  # name min_length
    local name="$1" min_length="$2" value="${!1:-}"
    [[ -n "$value" ]] || stack_die "$name is not set: export it or put it in $STACK_ENV_FILE (see .env.example)."
    [[ "$value" != *CHANGE_ME* ]] || stack_die "$name still holds the .env.example placeholder; generate a real value (e.g. openssl rand -hex 24)."
    ((${#value} >= min_length)) || stack_die "$name is too short (${#value} characters); use at least $min_length."
}

if [[ "${MLFLOW_ADMIN_PASSWORD:-}" == "$MLFLOW_DEFAULT_ADMIN_PASSWORD" ]]; then
    stack_die "MLFLOW_ADMIN_PASSWORD is MLflow's well-known default '$MLFLOW_DEFAULT_ADMIN_PASSWORD'; refusing to start. Choose another (e.g. openssl rand -hex 24)."
fi
require_secret MLFLOW_ADMIN_PASSWORD 12  # MLflow itself rejects user passwords under 12 characters
[[ "$MLFLOW_ADMIN_PASSWORD" != *$'\n'* && "$MLFLOW_ADMIN_PASSWORD" != *$'\r'* ]] \
    || stack_die "MLFLOW_ADMIN_PASSWORD must be a single line."
[[ "$MLFLOW_ADMIN_PASSWORD" != [[:space:]]* && "$MLFLOW_ADMIN_PASSWORD" != *[[:space:]] ]] \
    || stack_die "MLFLOW_ADMIN_PASSWORD must not start or end with whitespace (the ini file would lose it)."
if [[ "${MLFLOW_ADMIN_PASSWORD,,}" == "${MLFLOW_ADMIN_USERNAME,,}"* ]]; then
    stack_die "MLFLOW_ADMIN_PASSWORD must not start with the admin username."
fi
require_secret MLFLOW_FLASK_SERVER_SECRET_KEY 16
require_secret PREFECT_SERVER_API_AUTH_STRING 12
[[ "$PREFECT_SERVER_API_AUTH_STRING" == ?*:?* ]] \
    || stack_die "PREFECT_SERVER_API_AUTH_STRING must look like 'user:password'."
# Flows run by the worker log to MLflow as this user (the admin unless set).
MLFLOW_TRACKING_USERNAME="${MLFLOW_TRACKING_USERNAME:-$MLFLOW_ADMIN_USERNAME}"
if [[ "$MLFLOW_TRACKING_USERNAME" == "$MLFLOW_ADMIN_USERNAME" ]]; then
    MLFLOW_TRACKING_PASSWORD="$MLFLOW_ADMIN_PASSWORD"
else
    require_secret MLFLOW_TRACKING_PASSWORD 12
fi
[[ "$STACK_HOST" == 127.* || "$STACK_HOST" == localhost ]] \
    || stack_die "STACK_HOST=$STACK_HOST is not a loopback address; the native stack binds loopback only."
for tool in "$STACK_PYTHON" "$STACK_MLFLOW_BIN" "$STACK_PREFECT_BIN"; do
    [[ -x "$tool" ]] || stack_die "$tool not found; create the venv first (make install)."
done
"$STACK_PYTHON" -c "import flask_wtf" 2>/dev/null \
    || stack_die "MLflow basic-auth needs Flask-WTF, which $STACK_PYTHON lacks (it is mlflow's [auth] extra)."

# --- small helpers -----------------------------------------------------------
# Prints the HTTP status of a request (000 when nothing answers).
http_status() {  # method url [basic-auth user:password]
    "$STACK_PYTHON" - "$@" <<'PY'
import base64
import sys
import urllib.error
import urllib.request

method, url = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
request.add_header("Content-Type", "application/json")
if len(sys.argv) > 3:
    request.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[3].encode()).decode())
try:
    # Generous: a basic-auth check hashes the password on a possibly busy machine.
    with urllib.request.urlopen(request, timeout=20) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError:
    print("000")
PY
}

port_in_use() {
    "$STACK_PYTHON" -c "import socket, sys; s = socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)" \
        "$STACK_HOST" "$1"
}

fail_with_log() {  # service message
    local log_file
    log_file="$(stack_log_file "$1")"
    printf '[stack] ---- last 40 lines of %s ----\n' "$log_file" >&2
    tail -n 40 "$log_file" >&2 || true
    stack_die "$2 (full log: $log_file; stop what did start with scripts/stack_down.sh)"
}

# Starts "$@" detached, as the leader of a new session (so stack_down.sh can
# signal the whole process group), with stdout/stderr appended to its log.
start_service() {  # service command...
    local service="$1"
    shift
    local log_file
    log_file="$(stack_log_file "$service")"
    printf '\n==== %s starting at %s ====\n' "$service" "$(date -Is)" >>"$log_file"
    setsid "$@" >>"$log_file" 2>&1 </dev/null &
    printf '%s' "$!" >"$(stack_pid_file "$service")"
    stack_log "started $service (pid $!, log $log_file)"
}

wait_for_http() {  # service url expected_status
    local service="$1" url="$2" expected="$3" deadline=$((SECONDS + STACK_START_TIMEOUT)) status
    while ((SECONDS < deadline)); do
        stack_running_pid "$service" >/dev/null || fail_with_log "$service" "$service exited during start-up"
        status="$(http_status GET "$url")"
        if [[ "$status" == "$expected" ]]; then
            stack_log "$service is healthy ($url)"
            return 0
        fi
        sleep 1
    done
    fail_with_log "$service" "$service did not answer $expected on $url within ${STACK_START_TIMEOUT}s"
}

# --- state directory and databases -------------------------------------------------
mkdir -p "$STACK_STATE_DIR" "$STACK_LOG_DIR" "$STACK_PID_DIR" "$STACK_ARTIFACTS_DIR" \
    "$(dirname "$STACK_AUTH_CONFIG")" "$STACK_PREFECT_HOME"
chmod 700 "$STACK_STATE_DIR"
touch "$STACK_STATE_MARKER"
start_time=$SECONDS

stack_pg_databases create "$STACK_MLFLOW_DB" "$STACK_MLFLOW_AUTH_DB" "$STACK_PREFECT_DB" \
    || stack_die "could not create the databases on $STACK_PG_HOST:$STACK_PG_PORT as $STACK_PG_USER."

pg_base="postgresql+psycopg2://$STACK_PG_USER@$STACK_PG_HOST:$STACK_PG_PORT"
export DO_NOT_TRACK=true  # read by both MLflow's and Prefect's telemetry

# --- MLflow ------------------------------------------------------------------------
if pid="$(stack_running_pid mlflow)"; then
    stack_log "mlflow already running (pid $pid)"
else
    port_in_use "$MLFLOW_PORT" && stack_die "port $MLFLOW_PORT is already taken by another process; set MLFLOW_PORT."
    # The auth ini holds the bootstrap admin password, so only the owner may read it.
    # MLflow parses it with configparser, which reads "%%" as "%".
    # MLflow reads admin_password only when the user store is empty; later changes
    # go through /api/2.0/mlflow/users/update-password.
    (
        umask 077
        cat >"$STACK_AUTH_CONFIG" <<INI
[mlflow]
default_permission = READ
database_uri = $pg_base/$STACK_MLFLOW_AUTH_DB
admin_username = $MLFLOW_ADMIN_USERNAME
admin_password = ${MLFLOW_ADMIN_PASSWORD//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
auth_cache_ttl_seconds = $STACK_MLFLOW_AUTH_CACHE_TTL
INI
    )
    allowed_hosts="$STACK_HOST,$STACK_HOST:$MLFLOW_PORT,localhost,localhost:$MLFLOW_PORT"
    [[ -n "$MLFLOW_EXTRA_ALLOWED_HOSTS" ]] && allowed_hosts="$allowed_hosts,$MLFLOW_EXTRA_ALLOWED_HOSTS"
    # env -u: an inherited MLFLOW_AUTH_ADMIN_* would silently override the ini.
    start_service mlflow env -u MLFLOW_AUTH_ADMIN_USERNAME -u MLFLOW_AUTH_ADMIN_PASSWORD \
        MLFLOW_AUTH_CONFIG_PATH="$STACK_AUTH_CONFIG" \
        MLFLOW_FLASK_SERVER_SECRET_KEY="$MLFLOW_FLASK_SERVER_SECRET_KEY" \
        MLFLOW_DISABLE_TELEMETRY=true \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="$STACK_MLFLOW_JOBS" \
        "$STACK_MLFLOW_BIN" server \
        --app-name basic-auth \
        --backend-store-uri "$pg_base/$STACK_MLFLOW_DB" \
        --serve-artifacts \
        --artifacts-destination "$STACK_ARTIFACTS_DIR" \
        --host "$STACK_HOST" \
        --port "$MLFLOW_PORT" \
        --workers 1 \
        --allowed-hosts "$allowed_hosts" \
        --cors-allowed-origins "http://$STACK_HOST:$MLFLOW_PORT,http://localhost:$MLFLOW_PORT"
fi

# --- Prefect server ------------------------------------------------------------------
# The Prefect CLI and worker below share this environment.
export PREFECT_HOME="$STACK_PREFECT_HOME"
export PREFECT_API_URL="$PREFECT_URL"
export PREFECT_API_AUTH_STRING="$PREFECT_SERVER_API_AUTH_STRING"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false
if pid="$(stack_running_pid prefect-server)"; then
    stack_log "prefect-server already running (pid $pid)"
else
    port_in_use "$PREFECT_PORT" && stack_die "port $PREFECT_PORT is already taken by another process; set PREFECT_PORT."
    start_service prefect-server env \
        PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$STACK_PG_USER@$STACK_PG_HOST:$STACK_PG_PORT/$STACK_PREFECT_DB" \
        PREFECT_SERVER_API_AUTH_STRING="$PREFECT_SERVER_API_AUTH_STRING" \
        PREFECT_SERVER_UI_ENABLED="$STACK_PREFECT_UI" \
        "$STACK_PREFECT_BIN" server start --host "$STACK_HOST" --port "$PREFECT_PORT"
fi

wait_for_http mlflow "$MLFLOW_URL/health" 200
wait_for_http prefect-server "$PREFECT_URL/health" 200

# The bootstrap password is ignored once the admin exists, so a changed
# MLFLOW_ADMIN_PASSWORD would otherwise go unnoticed until a client gets 401.
admin_status="$(http_status GET "$MLFLOW_URL/api/2.0/mlflow/users/get?username=$MLFLOW_ADMIN_USERNAME" \
    "$MLFLOW_ADMIN_USERNAME:$MLFLOW_ADMIN_PASSWORD")"
if [[ "$admin_status" != 200 ]]; then
    stack_log "WARNING: $MLFLOW_ADMIN_USERNAME cannot log in with MLFLOW_ADMIN_PASSWORD (HTTP $admin_status):" \
        "the auth database $STACK_MLFLOW_AUTH_DB keeps the password of its first start."
fi

# The worker's MLflow user, as compose's mlflow-init creates it.
MLFLOW_TRACKING_URI="$MLFLOW_URL" MLFLOW_ADMIN_USERNAME="$MLFLOW_ADMIN_USERNAME" \
    MLFLOW_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD" MLFLOW_TRACKING_USERNAME="$MLFLOW_TRACKING_USERNAME" \
    MLFLOW_TRACKING_PASSWORD="$MLFLOW_TRACKING_PASSWORD" \
    "$STACK_PYTHON" "$STACK_ROOT/docker/mlflow/create_pipeline_user.py" | sed 's/^/[stack] /' \
    || stack_die "could not create the MLflow user $MLFLOW_TRACKING_USERNAME for the worker."

# --- automations, work pool and worker -------------------------------------------------
# Flow runs whose process died are marked CRASHED, not left RUNNING (idempotent; flows/automations.py).
(cd "$STACK_ROOT" && "$STACK_PYTHON" -m flows.automations) | sed 's/^/[stack] /' \
    || stack_die "could not install the Prefect automations (flows/automations.py)."
if ! "$STACK_PREFECT_BIN" work-pool inspect "$PREFECT_WORK_POOL" >/dev/null 2>&1; then
    "$STACK_PREFECT_BIN" work-pool create "$PREFECT_WORK_POOL" --type process >/dev/null \
        || stack_die "could not create the work pool $PREFECT_WORK_POOL."
    stack_log "created work pool $PREFECT_WORK_POOL"
fi
if pid="$(stack_running_pid prefect-worker)"; then
    stack_log "prefect-worker already running (pid $pid)"
else
    start_service prefect-worker env \
        MLFLOW_TRACKING_URI="$MLFLOW_URL" \
        MLFLOW_TRACKING_USERNAME="$MLFLOW_TRACKING_USERNAME" \
        MLFLOW_TRACKING_PASSWORD="$MLFLOW_TRACKING_PASSWORD" \
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
        "$STACK_PREFECT_BIN" worker start --pool "$PREFECT_WORK_POOL" --type process \
        --name "$PREFECT_WORKER_NAME"
fi

# A worker counts as up once the server lists it under the pool (its first heartbeat).
deadline=$((SECONDS + STACK_START_TIMEOUT))
until PREFECT_WORKER_NAME="$PREFECT_WORKER_NAME" "$STACK_PYTHON" - "$PREFECT_URL/work_pools/$PREFECT_WORK_POOL/workers/filter" <<'PY'
import base64
import json
import os
import sys
import urllib.request

request = urllib.request.Request(sys.argv[1], data=b"{}", method="POST")
request.add_header("Content-Type", "application/json")
auth = base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
request.add_header("Authorization", f"Basic {auth}")
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        workers = json.load(response)
except OSError:
    sys.exit(1)
sys.exit(0 if any(w["name"] == os.environ["PREFECT_WORKER_NAME"] for w in workers) else 1)
PY
do
    stack_running_pid prefect-worker >/dev/null || fail_with_log prefect-worker "prefect-worker exited during start-up"
    ((SECONDS < deadline)) || fail_with_log prefect-worker "worker $PREFECT_WORKER_NAME did not register within ${STACK_START_TIMEOUT}s"
    sleep 1
done
stack_log "prefect-worker $PREFECT_WORKER_NAME is polling pool $PREFECT_WORK_POOL"

stack_log "stack up in $((SECONDS - start_time))s: MLflow $MLFLOW_URL  Prefect ${PREFECT_URL%/api}  (state: $STACK_STATE_DIR)"
