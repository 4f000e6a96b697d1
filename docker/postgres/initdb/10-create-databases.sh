#!/bin/bash
# Runs once, when the postgres container initialises an empty data volume
# (docker-entrypoint-initdb.d): one database per service, all owned by
# POSTGRES_USER. MLflow's tracking store and its basic-auth user store get
# separate databases so either can be backed up or reset on its own.
set -euo pipefail

for database in ${POSTGRES_SERVICE_DATABASES:-mlflow mlflow_auth prefect}; do
    if [[ ! "$database" =~ ^[a-z_][a-z0-9_]*$ ]]; then
        echo "refusing database name '$database' (lowercase letters, digits, _)" >&2
        exit 1
    fi
    echo "creating database $database"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE \"$database\" OWNER \"$POSTGRES_USER\""
done
