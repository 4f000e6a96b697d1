"""Static checks of the production stack files: docker-compose.yml, .env.example, README.md.

No Docker needed. The Compose Specification schema is vendored as
tests/data/compose-spec.json so the check runs offline. Origin: Debian bookworm's
package docker-compose 1.29.2-3 (`apt-get download docker-compose`), file
/usr/lib/python3/dist-packages/compose/config/compose_spec.json (Apache-2.0, Docker Inc.),
sha256 0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac. It is the
Compose Specification as of docker-compose 1.29.2 (May 2021), JSON Schema draft 2019-09:
keys added to the spec since (top-level `name`, healthcheck `start_interval`, ...) fail
against it, so docker-compose.yml keeps to keys both old and current Compose understand.
"""

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
README = REPO_ROOT / "README.md"
SCHEMA_FILE = REPO_ROOT / "tests" / "data" / "compose-spec.json"

SERVICES_WITH_HEALTHCHECK = ("postgres", "minio", "mlflow", "prefect-server")
# Environment keys that hold credentials.
SECRET_KEY_PATTERN = re.compile(r"PASSWORD|SECRET|_KEY$|KEY_ID$|TOKEN|AUTH_STRING")
# ${VAR}, ${VAR:-default}, ${VAR:?message}; `$${` is compose's escape for a literal `${`.
VARIABLE_REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
REQUIRED_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")
# A pinned tag names a version: it holds a digit and is not `latest`; a digest pins too.
PINNED_IMAGE = re.compile(r"^[^\s:@]+(:[^\s:@]*\d[^\s:@]*)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *project-image` merge keys, as compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the KEY=VALUE list form
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _env_example_keys() -> set[str]:
    keys = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", line)
        if match:
            keys.add(match.group(1))
    return keys


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda error: list(error.path))
    messages = [f"{'/'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in errors]
    assert not messages, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(messages)


def test_every_service_has_a_pinned_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service.get("image")
        assert image, f"service {name} has neither image nor build"
        assert PINNED_IMAGE.match(image) and ":" in image, f"service {name}: image {image!r} is not pinned to a version"
        assert not image.endswith(":latest"), f"service {name}: image {image!r} uses the moving tag latest"


@pytest.mark.parametrize("name", SERVICES_WITH_HEALTHCHECK)
def test_core_services_have_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    healthcheck = services[name].get("healthcheck") or {}
    assert healthcheck.get("test"), f"service {name} has no healthcheck test"
    assert not healthcheck.get("disable"), f"service {name} disables its healthcheck"


def test_depends_on_waits_for_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on")
        if depends_on is None:
            continue
        assert isinstance(depends_on, dict), f"service {name}: depends_on is a bare list; give each a condition"
        for dependency, options in depends_on.items():
            assert dependency in services, f"service {name} depends on unknown service {dependency}"
            assert (options or {}).get("condition") in {"service_healthy", "service_completed_successfully"}, (
                f"service {name} starts before {dependency} is healthy or done"
            )


def test_credentials_are_required_references_never_literals(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if SECRET_KEY_PATTERN.search(key):
                assert REQUIRED_REFERENCE.match(value), (
                    f"service {name}: {key} must be a ${{VAR:?message}} reference to .env, not {value!r}"
                )
    for text in _strings(compose):
        for match in URL_PASSWORD.finditer(text):
            assert REQUIRED_REFERENCE.match(match.group("password")), f"a URL embeds a literal password: {text!r}"


def test_every_compose_variable_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    used = {variable for text in _strings(compose) for variable in VARIABLE_REFERENCE.findall(text)}
    missing = sorted(used - _env_example_keys())
    assert not missing, f".env.example lacks {missing}, which docker-compose.yml reads"


def test_env_example_holds_placeholders_not_secrets() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if match and SECRET_KEY_PATTERN.search(match.group(1)) and not match.group(1).endswith("ACCESS_KEY"):
            assert "CHANGE_ME" in match.group(2), f".env.example: {match.group(1)} must be a CHANGE_ME placeholder"


def _readme_section(title: str) -> str:
    """The text under the Markdown heading `title`, up to the next heading of the same or a higher level."""
    if not README.exists():
        pytest.fail(f"{README.name} is missing; it needs a '{title}' section naming the compose services")
    lines = README.read_text().splitlines()
    for index, line in enumerate(lines):
        heading = re.match(r"^(#+)\s+(.*?)\s*#*\s*$", line)
        if heading and heading.group(2).strip().lower() == title.lower():
            level = len(heading.group(1))
            body = []
            for following in lines[index + 1 :]:
                next_heading = re.match(r"^(#+)\s", following)
                if next_heading and len(next_heading.group(1)) <= level:
                    break
                body.append(following)
            return "\n".join(body)
    pytest.fail(f"{README.name} has no '{title}' section; it must list the compose services as `name` items")


def _documented_services(section: str) -> set[str]:
    # A service is a backticked name opening a list item (- `mlflow` ...) or a table row (| `mlflow` | ...).
    pattern = re.compile(r"^\s*(?:[-*+]|\|)\s*`([A-Za-z0-9._-]+)`", re.MULTILINE)
    return set(pattern.findall(section))


def test_readme_production_stack_names_only_real_services(services: dict[str, dict[str, Any]]) -> None:
    documented = _documented_services(_readme_section("Production stack"))
    assert documented, "README 'Production stack' lists no services (expected lines like '- `mlflow` ...')"
    unknown = sorted(documented - set(services))
    assert not unknown, f"README 'Production stack' names services docker-compose.yml lacks: {unknown}"
    undocumented = sorted(set(services) - documented)
    assert not undocumented, f"README 'Production stack' does not describe the services {undocumented}"
