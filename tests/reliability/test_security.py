"""Security of what the pipeline loads and of what the repository holds (issue 7, items 14 and 15).

Model loading: only `.keras` files, only in Keras safe mode, only when the sha256 recorded at
training/registration matches. A marker file written by the payload proves that refused code never
ran (a control loads the same file unsafely and sees the marker appear).

Repository: no private keys, cloud access keys or literal passwords in tracked files (or in the
history, for keys), `.env` git-ignored, `.env.example` placeholders only.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import subprocess
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import RegistryError
from pipeline.lineage import file_sha256
from pipeline.model_files import load_model_checked
from tests.conftest import REPO, make_project, tiny_params

# --------------------------------------------------------------------------- model loading


def _lambda_writing(marker: Path):
    """A Python lambda whose code appends to `marker` each time it runs (Keras stores its bytecode)."""
    return eval(f"lambda x: (open({str(marker)!r}, 'a').write('ran'), x)[1]")  # the payload under test


def _model_with_lambda(path: Path, marker: Path) -> Path:
    import keras

    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Lambda(_lambda_writing(marker), name="payload")(inputs)
    keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden)).save(path)
    marker.unlink(missing_ok=True)  # building the graph called the lambda once; start clean
    return path


def _plain_model(path: Path) -> Path:
    import keras

    inputs = keras.Input((4,), name="features")
    keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs)).save(path)
    return path


def _with_layer_replaced(source: Path, target: Path, layer: dict) -> Path:
    """A copy of a saved .keras whose layer 1 (the Dense) is replaced in config.json."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1] = {**config["config"]["layers"][1], **layer}
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


def test_lambda_layer_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    import keras

    marker = tmp_path / "lambda_ran.txt"
    path = _model_with_lambda(tmp_path / "lambda.keras", marker)
    with pytest.raises(ValueError) as caught:
        load_model_checked(path, file_sha256(path))  # the hash matches: safe mode alone refuses it
    message = str(caught.value)
    assert str(path) in message
    assert "Lambda" in message and "arbitrary code execution" in message and "safe_mode" in message
    assert not marker.exists(), "the Lambda's code ran while loading in safe mode"
    # Control: the marker does detect execution. Unsafe loading rebuilds the graph and calls the lambda.
    keras.saving.load_model(path, safe_mode=False, compile=False)
    assert marker.read_text().startswith("ran")


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        # A class from outside Keras (CVE-2025-1550 style): it would run `touch <marker>`.
        ({"module": "subprocess", "class_name": "Popen", "registered_name": None}, "Could not locate class 'Popen'"),
        # Keras utilities that are not modelling functions (CVE-2025-8747, CVE-2025-9906 style).
        ({"module": "keras.utils", "class_name": "get_file", "registered_name": None},
         "Non-modeling APIs are disallowed"),
        ({"module": "keras.config", "class_name": "enable_unsafe_deserialization", "registered_name": None,
          "config": {}}, "Non-modeling APIs are disallowed"),
    ],
    ids=["subprocess.Popen", "keras.utils.get_file", "enable_unsafe_deserialization"],
)
def test_crafted_config_reaching_outside_keras_is_refused(tmp_path: Path, layer: dict, expected: str) -> None:
    marker = tmp_path / "payload_ran.txt"
    cache = tmp_path / "get_file_cache"
    (tmp_path / "payload.txt").write_text("downloaded")
    layer = copy.deepcopy(layer)
    layer.setdefault("config", {"args": ["touch", str(marker)], "fname": "payload.txt",
                                "origin": (tmp_path / "payload.txt").as_uri(), "cache_dir": str(cache)})
    path = _with_layer_replaced(_plain_model(tmp_path / "plain.keras"), tmp_path / "crafted.keras", layer)
    with pytest.raises(ValueError) as caught:
        load_model_checked(path, file_sha256(path))
    assert str(path) in str(caught.value) and expected in str(caught.value)
    assert not marker.exists() and not cache.exists(), "the crafted object was called"
    # Nothing in the file switched safe mode off for later loads.
    lambda_model = _model_with_lambda(tmp_path / "lambda.keras", marker)
    with pytest.raises(ValueError, match="Lambda"):
        load_model_checked(lambda_model)
    assert not marker.exists()


def test_lambda_config_deserialized_directly_is_refused(tmp_path: Path) -> None:
    """CVE-2026-12481 (Keras 3.14.0): outside load_model, an unset safe_mode allowed the lambda. Fixed in
    the pinned Keras; this keeps it so (clone_model and layers.deserialize take that path)."""
    import keras

    marker = tmp_path / "lambda_ran.txt"
    config = keras.layers.serialize(keras.layers.Lambda(_lambda_writing(marker)))
    with pytest.raises(ValueError, match="Lambda"):
        keras.layers.deserialize(config)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.h5", "model.hdf5", "model.H5", "model.keras.h5", "saved_model.pb", "model"])
def test_only_the_keras_format_is_loaded(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    path = tmp_path / name
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature; never opened anyway
    monkeypatch.setattr(keras.saving, "load_model", _must_not_load)
    with pytest.raises(ValueError, match=r"only the \.keras format is loaded"):
        load_model_checked(path)


def test_legacy_h5_renamed_to_keras_is_refused_without_running_code(tmp_path: Path) -> None:
    import keras

    marker = tmp_path / "lambda_ran.txt"
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.Lambda(_lambda_writing(marker))(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "legacy.h5")  # the format of CVE-2025-9905
    marker.unlink(missing_ok=True)
    renamed = tmp_path / "legacy.keras"
    renamed.write_bytes((tmp_path / "legacy.h5").read_bytes())
    with pytest.raises(ValueError, match="zip"):
        load_model_checked(renamed)
    assert not marker.exists()


def _must_not_load(*args, **kwargs):
    raise AssertionError("keras.saving.load_model was called")


def test_modified_model_is_refused_before_keras_opens_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    marker = tmp_path / "lambda_ran.txt"
    path = _plain_model(tmp_path / "model.keras")
    recorded = file_sha256(path)
    # The attack: swap in a model with a payload after the hash was recorded.
    _model_with_lambda(path, marker)
    actual = file_sha256(path)
    monkeypatch.setattr(keras.saving, "load_model", _must_not_load)
    with pytest.raises(ValueError) as caught:
        load_model_checked(path, recorded)
    message = str(caught.value)
    assert recorded in message and actual in message and str(path) in message
    assert not marker.exists()


def test_registered_version_without_a_recorded_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`predict` never loads a registry model it cannot verify (real SQLite MLflow store)."""
    import keras

    from pipeline import tracking
    from pipeline.predict import load_registered_model

    project = make_project(tmp_path / "project", tiny_params(("three_conv",)))
    experiment_id = tracking.setup(project, "security")
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))
    with tracking.training_run(experiment_id, "unverified", {"variant": "test"}) as run_id:
        uri = tracking.log_keras_model(model, [str(digit) for digit in range(10)])
    name = "security-model"
    unverified = tracking.register_version(uri, name, {"run_id": run_id})
    tampered = tracking.register_version(uri, name, {"run_id": run_id, "model_sha256": "0" * 64})
    tracking.set_alias(name, "champion", unverified)

    monkeypatch.setattr(keras.saving, "load_model", _must_not_load)
    for model_uri in (f"models:/{name}/{unverified}", f"models:/{name}@champion"):
        with pytest.raises(ValueError, match=f"{name} v{unverified} has no recorded model_sha256 tag"):
            load_registered_model(model_uri)
    with pytest.raises(ValueError, match=r"differs from the recorded 0{64}"):
        load_registered_model(f"models:/{name}/{tampered}")
    with pytest.raises(RegistryError, match="has no alias 'challenger'"):
        load_registered_model(f"models:/{name}@challenger")
    with pytest.raises(RegistryError, match="expected models:/<name>@<alias>"):
        load_registered_model("runs:/abc/model")


@pytest.mark.slow
def test_served_model_whose_file_was_swapped_refuses_to_load(tmp_path: Path) -> None:
    """`mlflow models serve` checks the file against the sha256 logged with the model, as `predict`
    does: the same version serves a PNG before its file is swapped for another valid model, and after
    the swap the server exits naming both hashes, without ever answering (real SQLite store, loopback)."""
    import base64
    import io

    import keras
    import mlflow
    import numpy as np
    import requests
    from PIL import Image

    from pipeline import tracking
    from pipeline.model_files import save_model
    from tests.conftest import BIN
    from tests.reliability.faults import free_port, http_ok, running, tail, tool_env, wait_for

    project = make_project(tmp_path / "project", tiny_params(("three_conv",)))
    experiment_id = tracking.setup(project, "security")
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))
    with tracking.training_run(experiment_id, "served", {"variant": "test"}):
        uri = tracking.log_keras_model(model, [str(digit) for digit in range(10)])
    location = mlflow.MlflowClient().get_logged_model(uri.removeprefix("models:/")).artifact_location
    served_file = Path(location.removeprefix("file://")) / "artifacts" / "model.keras"
    recorded = file_sha256(served_file)
    png = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png, format="PNG")
    request = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(png.getvalue()).decode()]]}}

    def serve(log: Path) -> tuple[int, list[str]]:
        port = free_port()
        command = [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        env = tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
        with running(command, project, log, env=env) as server:
            wait_for(lambda: server.poll() is not None or http_ok(f"http://127.0.0.1:{port}/ping"), 300,
                     "the server to answer or exit", interval=0.5)
            if server.poll() is not None:
                return server.returncode, []
            answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
            assert answer.status_code == 200, answer.text
            return 0, [row["class"] for row in answer.json()["predictions"]]

    assert serve(tmp_path / "before.log") == (0, ["0"]), tail(tmp_path / "before.log")
    # The attack: another valid model (new weights) in place of the logged file.
    save_model(keras.models.clone_model(model), served_file)
    actual = file_sha256(served_file)
    assert actual != recorded
    returncode, answered = serve(tmp_path / "after.log")
    log = (tmp_path / "after.log").read_text()
    assert returncode != 0 and not answered, log[-3000:]
    assert f"sha256 {actual} differs from the recorded {recorded}" in log and str(served_file) in log, log[-3000:]


# --------------------------------------------------------------------------- secrets in the repository

# Built from pieces so that this file does not contain what it looks for.
PRIVATE_KEY = re.compile("-----BEGIN [A-Z0-9 ]*" + "PRIVATE KEY( BLOCK)?-----")
ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)" + r"[0-9A-Z]{16}\b")
# A credential-like name, `=` or `:`, then a value: NAME=value, NAME: value, "name": "value", name="value".
SECRET_NAME = r"[A-Za-z0-9_.-]*(?:passw(?:or)?d|passwd|secret|token|api_?key|auth_string|private_key)[A-Za-z0-9_]*"
ASSIGNMENT = re.compile(
    rf"(?P<prefix>\$\{{|\$)?(?P<name>{SECRET_NAME})[\"']?\s*(?::=|=|:)(?!=)\s*"
    r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s#,;)}\]]*)",
    re.IGNORECASE,
)
CONFIG_SUFFIXES = {".yaml", ".yml", ".ini", ".cfg", ".conf", ".toml", ".env", ".example", ".sh", ".bash",
                   ".mk", ".json", ".md", ".txt", ".lock"}
CONFIG_NAMES = {"Makefile", "Dockerfile", ".env", "config"}
# Values that are clearly not secrets: placeholders and references to the environment.
PLACEHOLDER = re.compile(r"CHANGE_?ME|placeholder|example|<[^>]*>|\*\*\*|redacted|^x+$", re.IGNORECASE)
REFERENCE = re.compile(r"^[\"']?(?:\$|%\(|\{\{|os\.|getenv|environ)")
# Deliberate literals, each with its reason. Keep this list short and explained.
ALLOWED_LITERALS = {
    # MLflow's documented default admin password; stack_up.sh holds it only to refuse it.
    ("scripts/stack_up.sh", "password1234"),
}
MIN_SECRET_LENGTH = 8  # shorter literals ("x" * 16 in a test, "-" in a shell default) are not credentials


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [name for name in listed.stdout.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        content = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None  # listed in the index but deleted in the working tree (another change in flight)
    if b"\0" in content[:8192]:
        return None  # binary
    return content.decode("utf-8", errors="replace")


def _is_config(name: str, text: str) -> bool:
    path = Path(name)
    return (path.suffix in CONFIG_SUFFIXES or path.name in CONFIG_NAMES or path.name.startswith(".env")
            or text.startswith("#!"))


def literal_secrets(name: str, text: str) -> list[str]:
    """`name: line: NAME=value` for each credential-like name assigned a literal value."""
    python = name.endswith(".py")
    if not python and not _is_config(name, text):
        return []
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in ASSIGNMENT.finditer(line):
            value = match.group("value")
            quoted = value[:1] in ("'", '"')
            literal = value.strip("'\"")
            if match.group("prefix") or not literal:
                continue  # ${NAME...} / $NAME: a reference, not an assignment
            if python and not quoted:
                continue  # an expression (os.environ[...], secrets.token_hex(...), a parameter)
            if "{" in literal or REFERENCE.match(literal) or PLACEHOLDER.search(literal):
                continue
            if len(literal) < MIN_SECRET_LENGTH or len(set(literal)) <= 2:
                continue
            if (name, literal) in ALLOWED_LITERALS:
                continue
            found.append(f"{name}:{number}: {match.group('name')}={literal[:4]}...")
    return found


def key_material(name: str, text: str) -> list[str]:
    return [f"{name}: {pattern.pattern[:20]}..." for pattern in (PRIVATE_KEY, ACCESS_KEY_ID) if pattern.search(text)]


def test_the_scanner_finds_what_it_looks_for() -> None:
    """The patterns on made-up content (built here, never stored in a file)."""
    token = secrets.token_hex(12)
    key_block = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE" + token + "\n-----END RSA PRIVATE KEY-----"
    assert key_material("id_rsa", key_block)
    assert key_material("settings.py", "aws = '" + "AKIA" + token[:16].upper() + "'")
    for name, line in [
        ("deploy.sh", f"export DB_PASSWORD={token}"),
        ("config.yaml", f"  password: {token}"),
        ("config.yaml", f'  api_key: "{token}"'),
        ("app.ini", f"admin_password = {token}"),
        (".env", f"MLFLOW_TRACKING_PASSWORD={token}"),
        ("settings.py", f'DATABASE_PASSWORD = "{token}"'),
        ("client.py", f'connect(password="{token}")'),
        ("client.py", f'headers = {{"X-Api-Token": "{token}"}}'),
    ]:
        assert literal_secrets(name, line), (name, line)
    for name, line in [
        ("compose.yml", "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in .env}"),
        ("up.sh", 'MLFLOW_TRACKING_PASSWORD="$MLFLOW_ADMIN_PASSWORD"'),
        ("up.sh", '[[ "${MLFLOW_ADMIN_PASSWORD:-}" != "password1234" ]]'),
        (".env.example", "POSTGRES_PASSWORD=CHANGE_ME_postgres_password"),
        ("conftest.py", 'admin_password = f"{secrets.token_hex(16)}%#;"'),
        ("conftest.py", 'password = os.environ["MLFLOW_TRACKING_PASSWORD"]'),
        ("test_stack.py", '"password": "x" * 16'),
        ("create_user.py", "def _request(method: str, url: str, username: str, password: str) -> int:"),
    ]:
        assert not literal_secrets(name, line), (name, line)


def test_no_keys_or_literal_passwords_in_tracked_files() -> None:
    problems = []
    for name in tracked_files():
        text = _text(REPO / name)
        if text is not None:
            problems += key_material(name, text) + literal_secrets(name, text)
    assert not problems, "credentials in tracked files:\n" + "\n".join(problems)


def history_key_material(repository: Path) -> list[str]:
    """Keys ever added or removed in any commit of `repository` (a deleted key is still published)."""
    # -G (an extended regex) lists only the commits whose diff touches a matching line; check those lines.
    history = subprocess.run(
        ["git", "log", "--all", "-p", "--no-color", "--no-ext-diff",
         "-G", "(BEGIN [A-Z0-9 ]*PRIVATE KEY|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16})"],
        cwd=repository, capture_output=True, text=True, errors="replace", check=True,
    ).stdout
    changed = "\n".join(line for line in history.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    return key_material("git history", changed)


def test_no_key_material_anywhere_in_the_history(tmp_path: Path) -> None:
    # The check itself, on a throwaway repository where a key was committed and then deleted.
    scratch = tmp_path / "repository"
    scratch.mkdir()
    git = ["git", "-c", "user.email=tests@example.invalid", "-c", "user.name=tests", "-c", "commit.gpgsign=false"]
    (scratch / "settings.py").write_text("KEY = '" + "AKIA" + secrets.token_hex(8).upper() + "'\n")
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "add"], ["rm", "-q", "settings.py"],
                    ["commit", "-qm", "remove"]):
        subprocess.run([*git, *command], cwd=scratch, check=True, capture_output=True)
    assert history_key_material(scratch)
    assert not history_key_material(REPO)


def test_env_file_is_ignored_and_never_tracked() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env is not git-ignored"
    tracked_env = [name for name in tracked_files()
                   if re.search(r"(^|/)\.env($|\.)", name) and not name.endswith(".env.example")]
    assert not tracked_env, f"environment files are tracked: {tracked_env}"


def test_env_example_holds_only_placeholders() -> None:
    secret_name = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|PRIVATE|(?<!ACCESS)_KEY$")
    checked = []
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if match and secret_name.search(match.group(1)):
            checked.append(match.group(1))
            assert "CHANGE_ME" in match.group(2), f".env.example: {match.group(1)} holds {match.group(2)!r}"
    assert len(checked) >= 5, f"expected the stack's secrets in .env.example, found {checked}"
