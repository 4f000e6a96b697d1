"""Every command a user copies from params.yaml, the README and the `--help` texts, run exactly as
written (issue 17 #2), in a copy of the project on tiny data, each checked for what the docs say it
does. It covers issue 17 #4 (a readable `make exp-show`, a `make plots` page that works offline with a
title per variant) and #14 (the README's `curl` request is a real digit, answered by the served model).

The commands are extracted from the files, not listed here: a command added to the docs fails
`test_every_documented_command_is_run_or_excused` until it is run below or excused with its reason
in NOT_RUN. The one liberty taken with "as written": the serving port 5001 of the README is replaced by
a free port in both the `mlflow models serve` and the `curl` command, so the test cannot collide with
something already listening on 5001.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline import tracking
from tests.conftest import BIN, REPO, make_project, run, tiny_params
from tests.reliability.faults import free_port, http_ok, running, wait_for

pytestmark = pytest.mark.slow

COMMENT = re.compile(r"\s+#\s.*$")  # a shell comment after a command (URLs hold '#' without a space before)
COMMAND_WORDS = ("python -m ", "dvc ", "make ", "mlflow ", "curl ")
# What the project copy needs beyond tests/conftest.py's PROJECT_FILES for the documented commands.
DOC_FILES = ["Makefile", "mk", "requirements.lock", "scripts/exp_show.py", "docs/serving", "docs/examples"]
# Documented commands that no test runs, and why.
DOCKER = "the Docker stack (docker-compose.yml): this machine has no Docker engine; tests/unit/test_compose.py " \
         "validates the file and tests/integration/test_stack.py runs the same services natively"
MULTI_HOST = "needs two hosts; tests/integration/test_multi_worker.py runs the train command as two loopback workers"


def readme_tf_config(index: int) -> dict:
    """The README's two-host TF_CONFIG (section "Training on several hosts") for worker `index`."""
    return {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": index}}


NOT_RUN = {
    "make test": "runs this test suite, which would run itself",
    "make test-fast": "runs this suite's unit tests, which this test belongs to",
    "cp .env.example .env": DOCKER,
    "docker compose up -d --build": DOCKER,
    "export MLFLOW_TRACKING_URI=http://localhost:5000": DOCKER,
    "export MLFLOW_TRACKING_USERNAME=$MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD=...": DOCKER,
    "export PREFECT_API_URL=http://localhost:4200/api PREFECT_API_AUTH_STRING=$PREFECT_SERVER_API_AUTH_STRING": DOCKER,
    "export AWS_ACCESS_KEY_ID=$MINIO_APP_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$MINIO_APP_SECRET_KEY": DOCKER,
    "dvc push -r stack": DOCKER,
    **{f"TF_CONFIG='{json.dumps(readme_tf_config(index))}' {command}": MULTI_HOST
       for index, command in ((0, "dvc repro train@three_conv"), (1, "python -m pipeline train three_conv"))},
    "python -m pipeline tune three_conv --trials 12": "the recorded output of a real study on the bundled sample "
                                                     "(about 8 minutes); TUNE runs the same command with fewer trials",
}
SERVE = "mlflow models serve -m models:/mnist-cnn@champion --env-manager local -p 5001"
CURL = "curl -s localhost:5001/invocations -H 'Content-Type: application/json' -d @docs/serving/digit_7.json"
CURL_PNG = ("curl -s localhost:5001/invocations -H 'Content-Type: application/json' -d "
            r'"{\"dataframe_split\": {\"columns\": [\"image\"], \"data\": '
            r'[[\"$(base64 -w0 docs/serving/digits/digit_7.png)\"]]}}"')
BROKEN = "python -m pipeline train three_conv --params docs/examples/broken_params.yaml"
TUNE = "python -m pipeline tune three_conv --trials 8"
TUNE_FLOW = "python -m flows.tune three_conv --trials 12 --workers 2"
TUNE_APPLY = "python -m pipeline tune three_conv --apply"
PREFECT = ["make prefect-server", "make prefect-pool", "make prefect-deploy", "make prefect-worker", "make prefect-run"]


# --------------------------------------------------------------------------- what the docs say


def params_commands() -> list[str]:
    """The commands in params.yaml's header comment (`#   <command>   # why`)."""
    found = []
    for line in (REPO / "params.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"^#\s{3}(\S.*)$", line)
        if match:
            found.append(COMMENT.sub("", match[1]).strip())
    return found


def readme_commands() -> list[str]:
    """The commands in the README: lines of ```bash blocks (continuations joined, comments dropped),
    `$ ` lines of plain ``` blocks, and indented (four-space) command blocks."""
    found: list[str] = []
    fence: str | None = None
    pending = ""
    block_may_start = True
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else (line[3:].strip() or "text")
            block_may_start = False
            continue
        if fence in ("bash", "sh"):
            text = pending + COMMENT.sub("", line).strip()
            pending = text[:-1].rstrip() + " " if text.endswith("\\") else ""
            if text and not pending and not text.startswith("#"):
                found.append(text)
        elif fence == "text" and line.startswith("$ "):
            found.append(line[2:].strip())
        elif fence is None and line.startswith("    ") and line.strip() and block_may_start:
            found.append(COMMENT.sub("", line).strip())
        indented = fence is None and line.startswith("    ") and block_may_start
        block_may_start = not line.strip() or indented
    return found


def help_commands() -> list[str]:
    """Command lines inside the `--help` texts of `python -m pipeline` and its commands (not the
    `Usage:` synopsis)."""
    texts = [run(["python", "-m", "pipeline", "--help"], REPO).stdout]
    names = re.findall(r"^│ (\w+)\s", texts[0], flags=re.MULTILINE)
    texts += [run(["python", "-m", "pipeline", name, "--help"], REPO).stdout for name in names]
    found = []
    for text in texts:
        for line in text.splitlines():
            stripped = line.strip("│ ").removeprefix("$ ")
            if stripped.startswith(COMMAND_WORDS) and "Usage:" not in line:
                found.append(stripped)
    return found


def documented() -> dict[str, list[str]]:
    return {"params.yaml": params_commands(), "README.md": readme_commands(), "--help": help_commands()}


def test_every_documented_command_is_run_or_excused() -> None:
    commands = {command for listed in documented().values() for command in listed}
    assert {"make repro", SERVE, CURL, CURL_PNG, BROKEN, "make plots", "make exp-show"} <= commands  # extraction works
    unknown = commands - set(RUN_ORDER) - set(PREFECT) - set(NOT_RUN)
    assert not unknown, f"documented commands no test runs (run them below, or excuse them in NOT_RUN): {unknown}"
    assert not set(NOT_RUN) - commands, "NOT_RUN excuses commands the docs no longer show"


# --------------------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on tiny data (one variant), with the Makefile, the documents' files and the venv."""
    params = tiny_params(("three_conv",))
    params["register"]["min_test_accuracy"] = 0.0  # the first version becomes champion: predict and serve need one
    project = make_project(tmp_path_factory.mktemp("documented") / "project", params)
    for name in DOC_FILES:
        source, target = REPO / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)  # keeps the times: make sees the venv as up to date
    (project / ".venv").symlink_to(REPO / ".venv")
    (project / ".git" / "info" / "exclude").write_text(".venv\n")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "documents"], project)
    return project


def shell(command: str, project: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """The command exactly as written, by bash in the project (the venv's tools first on PATH)."""
    return run(["bash", "-c", command], project, check=check, env=env)


def back_to_baseline(project: Path) -> None:
    """Each experiment command is tried from the committed baseline, as a user copying it would."""
    run(["git", "reset", "-q", "--hard"], project)
    run(["dvc", "checkout", "--force", "-q"], project)


def readme_output_of(command: str) -> list[str]:
    """The lines the README shows after `$ <command>`."""
    lines = (REPO / "README.md").read_text().split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    return lines.rstrip("\n").splitlines()


def check_broken_params(project: Path) -> None:
    result = shell(BROKEN, project, check=False)
    assert result.returncode == 2 and result.stderr.rstrip("\n").splitlines() == readme_output_of(BROKEN), result


def check_experiment(command: str, project: Path) -> None:
    back_to_baseline(project)
    result = shell(command, project)
    assert "Ran experiment(s)" in result.stdout + result.stderr, result.stdout[-2000:]


def check_exp_show(command: str, project: Path) -> None:
    """Issue 17 #4: a handful of readable columns (DVC's own table: 106, every cell "…")."""
    output = shell(command, project, COLUMNS="80").stdout
    header = output.splitlines()[0].split()
    assert header[0] == "Experiment" and "val_accuracy" in header and "…" not in output, output
    assert len(header) <= 12, header  # e.g. "Experiment three_conv val_accuracy three_conv test_accuracy <param>"


def check_plots(command: str, project: Path) -> None:
    """Issue 17 #4: the page loads only local scripts that exist, every chart's title names its
    variant, and headless Chromium with every network request refused draws each chart."""
    shell(command, project)
    page = project / "dvc_plots" / "index.html"
    html = page.read_text()
    scripts = re.findall(r'<script[^>]*\ssrc="([^"]+)"', html)
    assert len(scripts) == 3 and all((page.parent / src).resolve().is_file() for src in scripts), scripts
    assert not re.search(r'src="(https?:)?//', html), "a script from the network"
    titles = re.findall(r'"title": \{"text": "([^"]+)"', html)
    assert sorted(titles) == ["reports/curves/three_conv.csv", "reports/predictions/three_conv.csv"], titles
    chromium = shutil.which("chromium")
    assert chromium, "the plots page check needs Chromium (make system-deps)"
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            view = browser.new_page()
            requested: list[str] = []
            view.route("http*://**", lambda route: (requested.append(route.request.url), route.abort()))
            view.goto(page.as_uri())
            view.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 2",
                                   timeout=60_000)
            drawn = view.eval_on_selector_all(".vega-embed canvas, .vega-embed svg",
                                              "nodes => nodes.map(node => node.getBoundingClientRect().width)")
        finally:
            browser.close()
    charts = [width for width in drawn if width > 100]  # not the 14-pixel action-menu icons
    assert len(charts) == 2 and not requested, (drawn, requested)


def check_queue(project: Path) -> None:
    """The queue commands of params.yaml and the README: every queued experiment runs and succeeds."""
    back_to_baseline(project)
    for rate in ("0.001", "0.003"):
        command = f"dvc exp run --queue -S train.learning_rate={rate}"
        assert "Queued experiment" in shell(command, project).stdout
    try:
        shell("dvc queue start -j 2", project)

        def done() -> str | None:
            status = shell("dvc queue status", project).stdout
            return None if "Queued" in status or "Running" in status else status

        status = wait_for(done, 1500, "the queued experiments", interval=3)
    finally:
        shell("dvc queue stop --kill", project, check=False)
    assert status.count("Success") == 2, status


def arrange_two_champions(project: Path) -> tuple[str, str]:
    """For `rollback`: the version the pipeline registered, then another promoted over it (the registry
    as two pipeline runs leave it; the gate itself is tested in tests/integration/test_registry.py)."""
    tracking.setup(project, "cnn-variants")
    first = tracking.alias_version("mnist-cnn", "champion")
    assert first is not None, "the pipeline's first registration should be champion (min_test_accuracy 0)"
    tags = tracking.version_tags("mnist-cnn", first)
    run_id = tags["run_id"]
    second = tracking.register_version(tracking.run_tags(run_id)["model_uri"], "mnist-cnn", tags)
    tracking.set_version_tag("mnist-cnn", second, "previous_champion", first)
    tracking.set_alias("mnist-cnn", "champion", second)
    return first, second


def check_predict(command: str, project: Path) -> None:
    result = shell(command, project)
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert rows[0] == ["file", "class", "probability"] and [row[0] for row in rows[1:]] == [
        "digit_2.png", "digit_5.png", "digit_7.png"], result.stdout
    assert re.search(r"^model: mnist-cnn v\d+ \(models:/mnist-cnn@champion\)$", result.stderr, re.MULTILINE)


def check_rollback(command: str, project: Path) -> None:
    first, second = arrange_two_champions(project)
    result = shell(command, project)
    assert f"champion moved from v{second} back to v{first}" in result.stdout


def check_serving(project: Path, tmp_path: Path) -> None:
    """Issue 17 #14 and issue 15 #6: the README's requests are real digits, a PNG and floats, and the
    served champion answers each with a class name and one probability per class."""
    port = str(free_port())
    serve = SERVE.replace("5001", port)
    log = tmp_path / "serve.log"
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    with running(["bash", "-c", f"exec {serve}"], project, log, env={**os.environ, **env}) as server:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 300, "the served model", interval=1,
                 alive=server, log=log)
        answers = {curl: json.loads(shell(curl.replace("5001", port), project).stdout) for curl in (CURL_PNG, CURL)}
    digits = [str(digit) for digit in range(10)]
    for curl, answer in answers.items():
        rows = answer["predictions"]
        assert len(rows) == 1 and sorted(rows[0]) == sorted(["class", *digits]), (curl, answer)
        assert rows[0]["class"] in digits and abs(sum(rows[0][digit] for digit in digits) - 1) < 1e-4, (curl, answer)
    from PIL import Image

    from pipeline.sources import read_bundled

    sample = read_bundled()
    sevens = sample.x_train[sample.y_train == 7]
    request = np.asarray(json.loads((REPO / "docs" / "serving" / "digit_7.json").read_text())["instances"])
    assert any(np.allclose(seven / 255, request[0], atol=5e-5) for seven in sevens), \
        "docs/serving/digit_7.json is not a 7 of the bundled sample"
    png = np.asarray(Image.open(REPO / "docs" / "serving" / "digits" / "digit_7.png"))[..., np.newaxis]
    assert any(np.array_equal(seven, png) for seven in sevens), "docs/serving/digits/digit_7.png is not a bundled 7"


def tune_report(project: Path) -> dict:
    return json.loads((project / "reports" / "tune" / "three_conv.json").read_text())


def check_tune(project: Path) -> None:
    """The study reaches 8 trials with a result and names the best; the same command again runs none."""
    back_to_baseline(project)
    first = shell(TUNE, project).stdout
    assert first.count("[tune three_conv] trial ") >= 8 and re.search(r"^best: trial \d+, val_accuracy", first,
                                                                       re.MULTILINE), first
    assert re.search(r"^apply with: dvc exp run -S |^the best trial uses the settings", first, re.MULTILINE), first
    report = tune_report(project)
    assert report["trials"]["complete"] + report["trials"]["pruned"] == 8
    again = shell(TUNE, project).stdout
    assert "[tune three_conv] trial " not in again and report["study"] in again, again


def check_tune_flow(project: Path) -> None:
    """The `tune-variant` flow continues the same study to 12 trials on two Dask workers."""
    study = tune_report(project)["study"]
    shell(TUNE_FLOW, project)
    report = tune_report(project)
    assert report["study"] == study and report["trials"]["complete"] + report["trials"]["pruned"] == 12, report
    assert len({trial["number"] for trial in report["trial_list"]}) == len(report["trial_list"])


def check_tune_apply(project: Path) -> None:
    """--apply writes the best trial's settings, and the params file then resolves to them."""
    best = tune_report(project)["best"]
    output = shell(TUNE_APPLY, project).stdout
    if not best["settings"]:
        assert "the best trial uses the settings params.yaml already has" in output, output
        return
    assert "applied to params.yaml" in output, output
    from pipeline.config import load_params

    variant = load_params(project / "params.yaml").variant("three_conv")
    for key, value in best["settings"].items():
        if key.startswith("models.three_conv.train.") and "augment" not in key:
            assert getattr(variant.train, key.rsplit(".", 1)[1]) == value, key


# The documented commands in the order a new user meets them; each runs once.
RUN_ORDER = [
    "make repro", "dvc repro", BROKEN,
    "dvc exp run -S models.three_conv.train.optimizer=adam", "dvc exp run -S +models.three_conv.train.epochs=8",
    "dvc exp run -S +models.three_conv.train.epochs=10", "make exp-show", "dvc metrics diff", "make plots",
    "dvc push", "dvc pull",
    "dvc exp run --queue -S train.learning_rate=0.001", "dvc exp run --queue -S train.learning_rate=0.003",
    "dvc queue start -j 2", "dvc queue status",
    "python -m pipeline predict docs/serving/digits/", "python -m pipeline rollback", SERVE, CURL_PNG, CURL,
    "python -m flows.training", TUNE, TUNE_FLOW, TUNE_APPLY,
]


# Commands whose exit status is the check.
PLAIN = ("make repro", "dvc repro", "dvc metrics diff", "dvc push", "dvc pull", "python -m flows.training")


def test_the_documented_commands_do_what_the_docs_say(project: Path, tmp_path: Path) -> None:
    for command in RUN_ORDER:
        if command in PLAIN:
            shell(command, project)
            if command == "dvc repro":
                run(["git", "add", "-A"], project)
                run(["git", "commit", "-q", "-m", "baseline run"], project)
        elif command == BROKEN:
            check_broken_params(project)
        elif command.startswith("dvc exp run -S"):
            check_experiment(command, project)
        elif command == "make exp-show":
            check_exp_show(command, project)
        elif command == "make plots":
            check_plots(command, project)
        elif command == "dvc exp run --queue -S train.learning_rate=0.001":
            check_queue(project)  # the four queue commands, together
        elif command == "python -m pipeline predict docs/serving/digits/":
            back_to_baseline(project)
            check_predict(command, project)
        elif command == "python -m pipeline rollback":
            check_rollback(command, project)
        elif command == SERVE:
            check_serving(project, tmp_path)  # with CURL
        elif command == TUNE:
            check_tune(project)
        elif command == TUNE_FLOW:
            check_tune_flow(project)
        elif command == TUNE_APPLY:
            check_tune_apply(project)


def test_the_documented_prefect_commands_schedule_and_run_the_flow(project: Path, tmp_path: Path) -> None:
    """`make prefect-server`, `-pool`, `-deploy`, `-worker` and `-run`, as written, on a free port (the
    Makefile's PREFECT_PORT, from the environment): the deployment's run is executed by the worker."""
    env = {"PREFECT_PORT": str(free_port()), "DO_NOT_TRACK": "true"}
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}
    api = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
    with running(["bash", "-c", "exec make prefect-server"], project, tmp_path / "server.log", env=full_env) as server:
        wait_for(lambda: http_ok(f"{api}/health"), 300, "the Prefect server", interval=1, alive=server,
                 log=tmp_path / "server.log")
        shell("make prefect-pool", project, **env)
        shell("make prefect-deploy", project, **env)
        with running(["bash", "-c", "exec make prefect-worker"], project, tmp_path / "worker.log", env=full_env):
            created = shell("make prefect-run", project, **env).stdout
            flow_run = re.search(r"UUID:\s+([0-9a-f-]{36})", created)
            assert flow_run, created

            def state() -> str | None:
                shown = shell(f"PREFECT_API_URL={api} .venv/bin/prefect flow-run inspect {flow_run[1]}", project).stdout
                found = re.search(r"type=StateType\.(\w+)", shown)
                return found[1] if found and found[1] in ("COMPLETED", "FAILED", "CRASHED") else None

            final = wait_for(state, 900, "the flow run", interval=3)
            assert final == "COMPLETED", (tmp_path / "worker.log").read_text()
