"""One-shot set-up of the mlflow service (compose service mlflow-init).

Creates the MLflow user the Prefect worker logs runs as, so flows never hold the
admin password. New users get the server's default permission (READ) on other
people's experiments and MANAGE on the experiments and models they create.
Safe to run again: an existing user is left as it is.
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request


def _request(method: str, url: str, username: str, password: str, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main() -> int:
    tracking_uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    admin = (os.environ.get("MLFLOW_ADMIN_USERNAME") or "admin", os.environ["MLFLOW_ADMIN_PASSWORD"])
    username, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    if username == admin[0]:
        print(f"worker logs as the admin user {username}; nothing to create")
        return 0
    status = _request("GET", f"{tracking_uri}/api/2.0/mlflow/users/get?username={username}", *admin)
    if status == 200:
        print(f"user {username} already exists")
        return 0
    if status in (401, 403):
        print(f"the MLflow server rejected the admin credentials (HTTP {status})", file=sys.stderr)
        return 1
    status = _request(
        "POST", f"{tracking_uri}/api/2.0/mlflow/users/create", *admin, {"username": username, "password": password}
    )
    if status != 200:
        print(f"creating user {username} failed with HTTP {status}", file=sys.stderr)
        return 1
    print(f"created user {username}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
