"""What a flow run tells its user: Prefect artifacts (leaderboard, training report) and a line of the
champion history (pipeline/history.py), for each of the three endings: retrained, nothing new, failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import dvc_sync
from pipeline import history
from pipeline.config import PipelineConfig
from pipeline.evaluate import EVALUATION_ARTIFACTS
from pipeline.io import read_json
from pipeline.layout import Layout
from pipeline.register import REGISTRATION_ARTIFACTS
from pipeline.tracking import artifact_url, run_url, version_run_id

REPORT_KEY = "training-report"
GALLERY = f"{EVALUATION_ARTIFACTS}/error_gallery.png"  # on each variant's run
DISAGREEMENT = f"{REGISTRATION_ARTIFACTS}/disagreement.png"  # on the challenger's run (pipeline/register.py)


def _images_per_split(root: Path) -> dict[str, int]:
    prepared = Layout(root).prepare_report
    return read_json(prepared)["sizes"] if prepared.is_file() else {}


def _champion(root: Path, decision: dict[str, Any] | None) -> dict[str, Any]:
    """The champion after `decision`, with its variant (from the decision, or the history that promoted it)."""
    if not decision or not decision.get("champion"):
        return {"champion": None}
    champion = decision["champion"]
    if champion == decision.get("version"):
        return {"champion": champion, "champion_variant": decision["variant"]}
    earlier = [entry for entry in history.records(root) if entry.get("champion") == champion]
    return {"champion": champion, "champion_variant": earlier[-1].get("champion_variant", "") if earlier else ""}


def trained(root: Path, config: PipelineConfig, rows: list[dict[str, Any]], decision: dict[str, Any] | None,
            before: dict[str, Any], label: str) -> None:
    """After a retrain: the leaderboard, a report of the data growth next to the gate's decision and its
    pictures (shown inline from the MLflow server), a history line."""
    after = history.data_snapshot(root)
    create_table_artifact(table=rows, key="leaderboard", description="Variants ranked on validation accuracy")
    lines = ["# Training report", "", "## Data", "", history.growth_markdown(before, after), "", "## Decision", ""]
    if decision:
        gate = decision.get("mcnemar") or {}
        lines.append(f"**{decision['model_name']} v{decision['version']} ({decision['variant']}): "
                     f"{'promoted to champion' if decision['promoted'] else 'stays challenger'}**, "
                     f"{decision['reason']}." + (f" McNemar table {gate['table']}." if gate else ""))
        lines += ["", *_pictures(root, decision)]
    lines += ["", "## Variants", "", "| variant | val acc | test acc | params | MLflow run | error gallery |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        run = dvc_sync.read_run(root, row["variant"])
        tracked = run is not None and "run_id" in run
        link = f"[run]({run_url(root, config.mlflow.experiment_name, run['run_id'])})" if tracked else "-"
        gallery = f"[gallery]({artifact_url(root, run['run_id'], GALLERY)})" if tracked else "-"
        lines.append(f"| {row['variant']} | {row['val_accuracy']:.4f} | {row['test_accuracy']:.4f} | "
                     f"{row['params']:,} | {link} | {gallery} |")
    create_markdown_artifact(markdown="\n".join(lines) + "\n", key=REPORT_KEY,
                             description="Data growth, the gate's decision, metrics and links of this flow run")
    gate = (decision or {}).get("mcnemar") or {}
    history.append(root, {
        "label": label, "data_version": after["data_version"], "images": _images_per_split(root),
        "decision": ("promoted" if decision and decision["promoted"] else "kept") if decision else "trained",
        **_champion(root, decision), "challenger": decision and decision["version"],
        "test_accuracy": decision and decision["test_accuracy"], "p_value": gate.get("p_value"),
        "reason": decision["reason"] if decision else "no registration"})


def _pictures(root: Path, decision: dict[str, Any]) -> list[str]:
    """The champion's error gallery and, when the gate compared two models, where they disagree: images
    the Prefect UI loads from the MLflow server (its artifact URLs; a `file://` link opens nowhere)."""
    lines = []
    champion = decision.get("champion")
    if champion:
        run_id = (decision["run_id"] if champion == decision["version"]
                  else version_run_id(root, decision["model_name"], champion))
        lines += [f"### Champion v{champion}: most confident mistakes", "",
                  f"![error gallery of champion v{champion}]({artifact_url(root, run_id, GALLERY)})", ""]
    if decision.get("disagreement_picture") and decision.get("mcnemar"):
        table = decision["mcnemar"]["table"]
        lines += [f"### Where challenger v{decision['version']} and champion v{decision['previous_champion']} "
                  "disagree", "", f"Challenger right, champion wrong: **{table[1][0]}** images; champion right, "
                  f"challenger wrong: **{table[0][1]}** (McNemar exact p = {decision['mcnemar']['p_value']:.4g}).",
                  "", f"![disagreement gallery]({artifact_url(root, decision['run_id'], DISAGREEMENT)})", ""]
    return lines


def nothing_new(root: Path, before: dict[str, Any], label: str) -> dict[str, Any]:
    """Nothing stale: say since when the data has not changed and which champion stays; no MLflow run."""
    decision = dvc_sync.last_decision(root)
    since = history.unchanged_since(root, before["data_version"])
    if since is None and Layout(root).ingest_report.is_file():
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(Layout(root).ingest_report.stat().st_mtime))
    champion = _champion(root, decision)
    stays = f"champion v{champion['champion']} stays" if champion["champion"] else "there is no champion yet"
    message = f"no new data since {since or 'the first run'}; {stays}"
    create_markdown_artifact(markdown=f"# Training report\n\n{message.capitalize()}.\n\nData version "
                             f"`{before['data_version']}`, {before['images']:,} images.\n", key=REPORT_KEY,
                             description="Nothing to retrain")
    history.append(root, {"label": label, "data_version": before["data_version"], "images": _images_per_split(root),
                          "decision": "no new data", **champion, "reason": message})
    return {"leaderboard": None, "registry": decision, "skipped": True, "message": message}


def failed(root: Path, before: dict[str, Any], error: BaseException, label: str) -> None:
    """A failed run: its reason, and that the previous data version, models and champion are untouched."""
    decision = dvc_sync.last_decision(root)
    champion = _champion(root, decision)
    reason = f"{type(error).__name__}: {error}".replace(f"{root}/", "")  # paths as the project names them
    kept = f"champion v{champion['champion']} stays" if champion["champion"] else "there is no champion yet"
    create_markdown_artifact(
        markdown=f"# Training report: failed\n\n```\n{reason}\n```\n\nNothing was replaced: the previous data "
                 f"version `{before['data_version']}` ({before['images']:,} images), its models and reports "
                 f"are as they were; {kept}. Fix the data and the next run proceeds.\n",
        key=REPORT_KEY, description="Why this run failed")
    history.append(root, {"label": label, "data_version": before["data_version"], "images": _images_per_split(root),
                          "decision": "failed", **champion, "reason": " ".join(reason.split())[:400]})
