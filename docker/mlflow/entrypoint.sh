#!/bin/bash
# Entrypoint of the mlflow service: refuses unsafe secrets, writes the
# basic-auth ini MLflow reads (MLFLOW_AUTH_CONFIG_PATH) to a tmpfs, then runs
# the command compose gives (`mlflow server ...`).
set -euo pipefail

die() { echo "mlflow entrypoint: $*" >&2; exit 1; }

# MLflow's basic-auth used to bootstrap admin/password1234; it is public knowledge.
[[ "${MLFLOW_ADMIN_PASSWORD:-}" != "password1234" ]] \
    || die "MLFLOW_ADMIN_PASSWORD is MLflow's well-known default 'password1234'; set another in .env."
for name in MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_DATABASE_URI; do
    [[ -n "${!name:-}" ]] || die "$name is not set (see .env.example)."
done
[[ "$MLFLOW_ADMIN_PASSWORD" != *CHANGE_ME* && "$MLFLOW_FLASK_SERVER_SECRET_KEY" != *CHANGE_ME* ]] \
    || die "a secret still holds the .env.example placeholder; generate real values (openssl rand -hex 24)."
((${#MLFLOW_ADMIN_PASSWORD} >= 12)) || die "MLFLOW_ADMIN_PASSWORD must have at least 12 characters."
[[ "$MLFLOW_ADMIN_PASSWORD" != *$'\n'* && "$MLFLOW_ADMIN_PASSWORD" != [[:space:]]* && "$MLFLOW_ADMIN_PASSWORD" != *[[:space:]] ]] \
    || die "MLFLOW_ADMIN_PASSWORD must be one line without leading or trailing blanks."
((${#MLFLOW_FLASK_SERVER_SECRET_KEY} >= 16)) || die "MLFLOW_FLASK_SERVER_SECRET_KEY must have at least 16 characters."

export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-/run/mlflow/basic_auth.ini}"
mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
# admin_password is read only while the user store is empty (first start);
# afterwards rotate it with PATCH /api/2.0/mlflow/users/update-password.
# MLflow parses the ini with configparser, which reads "%%" as "%".
(
    umask 077
    cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI//%/%%}
admin_username = ${MLFLOW_ADMIN_USERNAME:-admin}
admin_password = ${MLFLOW_ADMIN_PASSWORD//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
INI
)
# The ini now holds them; keep them out of the server's environment.
unset MLFLOW_ADMIN_PASSWORD MLFLOW_AUTH_DATABASE_URI
exec "$@"
