"""The command line as a user meets it: one-line errors for what they can fix, tracebacks for bugs,
TensorFlow's start-up chatter hidden, and a clear message outside the project's environment."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer

from pipeline.cli import _clear_errors
from pipeline.errors import DataError, PipelineError
from tests.conftest import REPO


def test_project_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    @_clear_errors
    def command() -> None:
        raise DataError("data/source/7/x.png: image is 30x30 (width x height), expected 28x28")

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == 2
    message = "error: data/source/7/x.png: image is 30x30 (width x height), expected 28x28"
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("run_id"), FileNotFoundError("/tmp/x")])
def test_other_errors_are_bugs_and_keep_their_traceback(bug: Exception) -> None:
    @_clear_errors
    def command() -> None:
        raise bug

    with pytest.raises(type(bug)):
        command()
    assert not isinstance(bug, PipelineError)


def test_native_noise_is_filtered_and_everything_else_kept(tmp_path: Path) -> None:
    """Lines TensorFlow's C++ code writes to fd 2 before its logging starts go; a program's own lines stay."""
    script = textwrap.dedent("""
        import os, sys
        from pipeline import console
        console.quiet_tensorflow()
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1796234720.866728    6005 cudart_stub.cc:31] Could not find cuda drivers\\n")
        os.write(2, b"E0000 00:00:1796234726.069952    6005 cuda_platform.cc:52] failed call to cuInit\\n")
        print("warning: class imbalance", file=sys.stderr, flush=True)
        os.write(2, b"error: the user's own line\\n")
        console.restore_stderr()
        print("after", file=sys.stderr)
    """)
    quiet = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert quiet.stderr.splitlines() == ["warning: class imbalance", "error: the user's own line", "after"]
    verbose = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                             env={"PIPELINE_VERBOSE": "1", "PATH": "/usr/bin:/bin"})
    assert "cudart_stub.cc" in verbose.stderr and "cuInit" in verbose.stderr


def test_outside_the_project_environment_the_fix_is_named(tmp_path: Path) -> None:
    """`.venv/bin/dvc repro` without an activated venv runs stages with a `python` that lacks the
    dependencies: the message names that interpreter, what is missing and the command that fixes it."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    result = subprocess.run([str(bare / "bin" / "python"), "-m", "pipeline", "train", "three_conv"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert str(bare / "bin" / "python") in result.stderr and "cannot import" in result.stderr
    assert "dependencies are not installed" in result.stderr
    assert "source " in result.stderr and ".venv/bin/activate" in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_params_key_fails_the_stage_in_one_line(tmp_path: Path) -> None:
    """Issue 17 #5 through the command DVC runs: exit 2 and one line naming both lines, before any work."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("seed: 42\n", "seed: 42\nseed: 7\n", 1))
    result = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--params", str(params), "--root",
                             str(tmp_path)], capture_output=True, text=True, cwd=REPO, check=False)
    first = params.read_text().splitlines().index("seed: 42") + 1
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {params} is not valid YAML: duplicate key 'seed': first on line {first}, again on line {first + 1}"]
    assert not (tmp_path / "data").exists()
