"""`python -m pipeline <command>`: the stage commands of pipeline/cli.py, as DVC's `cmd:` runs them."""

import logging
import os
import sys
import traceback
from pathlib import Path

# The packages the commands import; without them this interpreter is not the project's environment.
try:
    import numpy  # noqa: F401
    import pydantic  # noqa: F401
    import typer  # noqa: F401
    import yaml  # noqa: F401
except ModuleNotFoundError as missing:
    venv = Path(__file__).resolve().parents[1] / ".venv"
    fix = (f"activate it: source {venv}/bin/activate (then rerun the command)" if (venv / "bin" / "python").exists()
           else "create it and run the pipeline: make repro (or only install it: make install)")
    print(f"error: {sys.executable} (Python {sys.version.split()[0]}) cannot import {missing.name!r}: the project's "
          f"dependencies are not installed for this interpreter. They live in the project's environment {venv}; "
          f"{fix}.", file=sys.stderr)
    sys.exit(2)

from pipeline import console, workspace

workspace.claim_for_dvc_run()  # a stage of `dvc repro` / `dvc exp run`: one run at a time in the workspace
from pipeline.cli import main  # noqa: E402

if "--verbose" in sys.argv[1:]:
    os.environ["PIPELINE_VERBOSE"] = "1"
console.quiet_tensorflow()
code: int | None = 0
try:
    main()  # click ends every command with SystemExit, also on success
except SystemExit as finished:
    code = finished.code if isinstance(finished.code, int | None) else 1
    if not isinstance(finished.code, int | None):
        print(finished.code, file=sys.stderr)
except BaseException:  # a bug: its traceback must reach the real stderr before the filter is removed
    traceback.print_exc()
    code = 1
console.restore_stderr()
if "tensorflow" in sys.modules:
    # A process that imported TensorFlow spends about 1.3 s tearing its modules down at exit
    # (benchmarks/results.md), paid by every train, evaluate and register stage. The command has
    # finished: its files are written and renamed, its MLflow run ended, its locks released.
    # So flush what is buffered and leave without the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code or 0)
sys.exit(code)
