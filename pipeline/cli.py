"""Command line: one command per stage (the `cmd:` of each DVC stage), also usable from Python.

    python -m pipeline --help
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import PipelineConfig, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CNN image-classifier pipeline: ingest -> prepare -> train -> evaluate -> compare -> register.")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params file.")]
# Read by pipeline/__main__.py before the command starts (TensorFlow's start-up lines come first).
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show TensorFlow's start-up and warning lines.")]
RootOption = Annotated[Path, typer.Option("--root", help="Project directory (data/, models/, reports/).")]


def _clear_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The project's own errors (bad params, bad data, a tracking server down...) print one line and
    exit 2; anything else is a bug and keeps its traceback. PIPELINE_DEBUG=1 shows every traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipeline.errors import PipelineError

        try:
            return command(*args, **kwargs)
        except PipelineError as error:
            if os.environ.get("PIPELINE_DEBUG"):
                raise
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _config(params: Path) -> PipelineConfig:
    return load_params(params)


@app.command()
@_clear_errors
def ingest(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
           verbose: VerboseOption = False) -> None:
    """Read the configured source, validate it, write data/raw/ and reports/data/."""
    from pipeline.ingest import run_ingest

    report = run_ingest(_config(params), root)
    for warning in report["warnings"]:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    sizes = ", ".join(f"{split} {info['images']}" for split, info in report["splits"].items())
    typer.echo(f"ingested {report['source']}: {sizes} images of {report['image_shape']}")


@app.command()
@_clear_errors
def source(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
           check: Annotated[bool, typer.Option(help="Only say whether data.path changed since the last check "
                                                    "(a listing, nothing downloaded); exit 0 either way.")] = False,
           verbose: VerboseOption = False) -> None:
    """Put data.path under DVC (dvc add in data/source/, else dvc import-url) or take in its new images
    (dvc update); then `dvc repro` trains on them."""
    from pipeline.versioning import bring_in, check_for_changes

    config = _config(params)
    if check:
        result = check_for_changes(config.data, root)
        typer.echo(f"{config.data.path or config.data.source}: "
                   + ("changed" if result["changed"] else "unchanged") + f" (fingerprint {result['fingerprint']})")
        return
    result = bring_in(config.data, root)
    if "copy" not in result:
        typer.echo(f"data.source {config.data.source}: nothing to version (it does not change)")
        return
    state = f"new version {result['after']}" if result["changed"] else f"unchanged ({result['after']})"
    typer.echo(f"{result['action']} {result['origin']} -> {result['copy']}: {state}; commit {result['dvc_file']}")


@app.command()
@_clear_errors
def prepare(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
            verbose: VerboseOption = False) -> None:
    """Split train/val/test by content hash, check leakage; write data/prepared/ (each split's rows of data/raw/)."""
    from pipeline.prepare import run_prepare

    report = run_prepare(_config(params), root)
    for warning in report["warnings"]:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"prepared {report['sizes']} (duplicates across splits: {report['duplicates']})")


@app.command()
@_clear_errors
def train(variant: Annotated[str, typer.Argument(help="A key of `models` in the params file.")],
          params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
          track: Annotated[bool, typer.Option(
              help="Check the MLflow tracking server before the fit (the evaluate stage logs the run).")] = True,
          verbose: VerboseOption = False) -> None:
    """Train one variant (resumes an interrupted run); write models/<variant>/ and the run record that
    the evaluate stage logs to MLflow. With train.distribution multi_worker, run it on every host of
    TF_CONFIG; worker 0 writes the outputs."""
    from pipeline.train import run_train

    info = run_train(_config(params), variant, root, track=track)
    if not info.get("published", True):
        typer.echo(f"worker {info['worker']} trained {variant} (model_digest {info['model_digest']}); "
                   f"worker 0 publishes models/{variant}/")
        return
    seconds = f", {info['train_seconds']:.1f}s" if "train_seconds" in info else " (reused a finished fit)"
    typer.echo(f"trained {variant}: {info['params']:,} parameters, best val_accuracy "
               f"{info['best_val_accuracy']:.4f}{seconds}")


@app.command()
@_clear_errors
def evaluate(variants: Annotated[list[str] | None, typer.Argument(
                 help="Keys of `models` in the params file (default: all).", show_default=False)] = None,
             params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
             track: Annotated[bool, typer.Option(
                 help="Log each variant's MLflow run: its training, test metrics and pictures.")] = True,
             verbose: VerboseOption = False) -> None:
    """Score trained variants on the test split; write their reports (metrics, pictures, CSVs) and log
    each one's MLflow run (the training and this evaluation)."""
    from pipeline.evaluate import run_evaluate

    run_evaluate(_config(params), root, variants, track=track)


@app.command()
@_clear_errors
def compare(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
            verbose: VerboseOption = False) -> None:
    """Rank every variant (reports/leaderboard.md and .csv)."""
    from pipeline.compare import run_compare

    table = run_compare(_config(params), root)
    typer.echo(table.to_string(index=False))


@app.command()
@_clear_errors
def register(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
             verbose: VerboseOption = False) -> None:
    """Register the best variant (validation accuracy) and promote it through the gate."""
    from pipeline.register import run_register

    decision = run_register(_config(params), root)
    typer.echo(f"registered {decision['model_name']} v{decision['version']} ({decision['variant']}): "
               f"{'PROMOTED to champion' if decision['promoted'] else 'stays challenger'} - {decision['reason']}")


@app.command()
@_clear_errors
def rollback(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
             verbose: VerboseOption = False) -> None:
    """Move the `champion` alias back to the previous champion version."""
    from pipeline.register import rollback_champion

    config = _config(params)
    result = rollback_champion(config, root)
    typer.echo(f"{config.registration.model_name}: champion moved from v{result['from']} back to v{result['to']}")


@app.command()
@_clear_errors
def predict(folder: Annotated[Path, typer.Argument(help="A folder of PNG/JPEG images.")],
            params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
            model_uri: Annotated[str | None, typer.Option(help="Default: models:/<name>@champion.")] = None,
            skip_bad: Annotated[bool, typer.Option(
                "--skip-bad", help="Classify the good images, list the bad ones (default: refuse all).")] = False,
            verbose: VerboseOption = False) -> None:
    """Classify a folder of images with the champion model; print file, class, probability.

    Every file is checked first; the model that answered is named on stderr.
    """
    from pipeline.predict import predict_folder

    result = predict_folder(_config(params), folder, root, model_uri, skip_bad=skip_bad)
    for problem in result.skipped:
        typer.secho(f"skipped: {problem}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"model: {result.model}", err=True)
    typer.echo(result.table.to_string(index=False))


@app.command()
@_clear_errors
def tune(variant: Annotated[str, typer.Argument(help="A key of `models` with a `tune` block.")],
         trials: Annotated[int | None, typer.Option(
             help="Trials with a result (complete or pruned) the study should have; default tune.trials. "
                  "A rerun continues the study.", show_default=False)] = None,
         apply: Annotated[bool, typer.Option(help="Write the best trial's settings into the params file.")] = False,
         params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
         track: Annotated[bool, typer.Option(help="MLflow parent run per study, child run per trial.")] = True,
         verbose: VerboseOption = False) -> None:
    """Search a variant's settings (models.<variant>.tune) with Optuna on the validation split; write
    reports/tune/<variant>.json and print the `dvc exp run -S ...` line that applies the best trial."""
    from pipeline.tune import run_tune

    report = run_tune(_config(params), variant, root, trials=trials, params_file=params, apply=apply,
                      track=track, verbose=verbose)
    for number in report["orphans"]:
        typer.echo(f"trial {number} of the study was left running by a process that ended: marked failed")
    counts = ", ".join(f"{count} {state}" for state, count in report["trials"].items() if count)
    typer.echo(f"study {report['study']} ({report['storage']}): {counts or 'no trials'}")
    best = report["best"]
    if best is None:
        typer.echo("no completed trial yet: rerun the command to continue the study")
        return
    typer.echo(f"best: trial {best['trial']}, val_accuracy {best['val_accuracy']:.4f}, {best['params']}")
    if not best["settings"]:
        typer.echo("the best trial uses the settings params.yaml already has")
    elif report["applied"]:
        typer.echo(f"applied to {params}: " + ", ".join(f"{key}={value}" for key, value in best["settings"].items()))
    else:
        typer.echo(f"apply with: {best['dvc_exp_run']}\n   or with: python -m pipeline tune {variant} --apply")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
