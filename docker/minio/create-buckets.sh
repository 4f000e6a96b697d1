#!/bin/sh
# One-shot set-up of the object store (service minio-init): the two buckets
# and an application user that may touch only them, so MLflow and DVC never
# hold the MinIO root credentials. Safe to run again.
set -eu

mc alias set stack http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

for bucket in mlflow-artifacts dvc-remote; do
    mc mb --ignore-existing "stack/$bucket"
done

mc admin policy create stack mlops-app /scripts/app-policy.json
mc admin user add stack "$MINIO_APP_ACCESS_KEY" "$MINIO_APP_SECRET_KEY"
# Attaching a policy the user already has is an error; that is the rerun case.
mc admin policy attach stack mlops-app --user "$MINIO_APP_ACCESS_KEY" 2>/dev/null \
    || echo "policy mlops-app already attached to the application user"
echo "buckets mlflow-artifacts and dvc-remote ready"
