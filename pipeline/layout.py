"""Every path the pipeline reads or writes, in one place (`dvc.yaml`'s outs agree: a unit test checks).

    data/source/<name>                        the user's images, under DVC (dvc add or dvc import-url)
    data/raw/, data/prepared/                 ingest, prepare (DVC-cached)
    reports/data/                             ingest, prepare: reports and pictures of the data
    models/<variant>/                         train@<variant> (DVC-cached; byte-reproducible)
    reports/evaluation/<variant>/             evaluate: pictures only (DVC image plots: `dvc plots diff`)
    reports/scores/<variant>/                 evaluate: per-class scores, confusion matrix CSV
    reports/metrics/<variant>.json            evaluate: test metrics (`dvc metrics show`)
    reports/predictions/<variant>.csv         evaluate: test predictions (`dvc plots show`, confusion)
    reports/curves/<variant>.csv              evaluate: learning curves (`dvc plots show`)
    reports/leaderboard.{md,csv}              compare
    reports/registry.json, model_card.md      register: this machine's registry decision (git-ignored)
    reports/history.jsonl                     the flow: one line per retrain decision (git-ignored)
    reports/runs/<variant>.json               train: this machine's last fit of a variant (git-ignored);
                                              evaluate adds the id of the MLflow run that logged it
    .cache/train/<variant>/                   train: crash-safety state while a fit runs
    .cache/train/<variant>.worker-<i>/        train, multi-worker: worker i's own state (removed at its end)
    .cache/tracking/<variant>.run_id          evaluate: the MLflow run being logged (crash safety)
    mlflow.db, mlruns/                        the default MLflow store
    reports/tune/<variant>.json               tune (not a DVC stage): a study's best trial and its -S line
    optuna.db, .cache/tune/<study>/           tune: the default study storage (git-ignored), trials' work dirs

Everything under DVC's outs is reproducible byte for byte; what differs from run to run (seconds,
MLflow run ids, the git commit) lives in MLflow and in the git-ignored records above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The project's paths under `root`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------ data
    @property
    def source_dir(self) -> Path:
        """The user's images (idx, csv, folder sources), versioned by DVC; ingest depends on it."""
        return self.root / "data" / "source"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def data_reports_dir(self) -> Path:
        return self.root / "reports" / "data"

    @property
    def ingest_report(self) -> Path:
        return self.data_reports_dir / "ingest.json"

    @property
    def samples_figure(self) -> Path:
        return self.data_reports_dir / "samples.png"

    @property
    def prepare_report(self) -> Path:
        return self.data_reports_dir / "prepare.json"

    @property
    def class_histogram_figure(self) -> Path:
        return self.data_reports_dir / "class_histogram.png"

    # ------------------------------------------------------------------ models
    def model_dir(self, variant: str) -> Path:
        return self.root / "models" / variant

    def model_file(self, variant: str) -> Path:
        return self.model_dir(variant) / "model.keras"

    def training_file(self, variant: str) -> Path:
        return self.model_dir(variant) / "training.json"

    def history_file(self, variant: str) -> Path:
        return self.model_dir(variant) / "history.json"

    def summary_file(self, variant: str) -> Path:
        return self.model_dir(variant) / "summary.txt"

    @property
    def source_state(self) -> Path:
        """The fingerprint of data.path at the last `python -m pipeline source --check` (this machine's)."""
        return self.root / "reports" / "runs" / "source_fingerprint.json"

    def run_record(self, variant: str) -> Path:
        return self.root / "reports" / "runs" / f"{variant}.json"

    def work_dir(self, variant: str) -> Path:
        return self.root / ".cache" / "train" / variant

    def worker_work_dir(self, variant: str, index: int) -> Path:
        """A non-chief worker's work directory: its backups must not overwrite the chief's when two workers
        share a disk, and the chief removes its own directory when it has published."""
        return self.root / ".cache" / "train" / f"{variant}.worker-{index}"

    def pending_run_file(self, variant: str) -> Path:
        """The id of the MLflow run the evaluate stage is logging a training into, until it has finished:
        left by a killed stage, it names the run to mark FAILED."""
        return self.root / ".cache" / "tracking" / f"{variant}.run_id"

    # ------------------------------------------------------------------ evaluation
    @property
    def pictures_dir(self) -> Path:
        """Every variant's evaluation pictures and nothing else: dvc.yaml declares it as image plots."""
        return self.root / "reports" / "evaluation"

    def evaluation_dir(self, variant: str) -> Path:
        return self.pictures_dir / variant

    @property
    def scores_dir(self) -> Path:
        return self.root / "reports" / "scores"

    def per_class_file(self, variant: str) -> Path:
        return self.scores_dir / variant / "per_class.json"

    def confusion_file(self, variant: str) -> Path:
        return self.scores_dir / variant / "confusion_matrix.csv"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "reports" / "metrics"

    def metrics_file(self, variant: str) -> Path:
        return self.metrics_dir / f"{variant}.json"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "reports" / "predictions"

    def predictions_file(self, variant: str) -> Path:
        return self.predictions_dir / f"{variant}.csv"

    @property
    def curves_dir(self) -> Path:
        return self.root / "reports" / "curves"

    def curves_file(self, variant: str) -> Path:
        return self.curves_dir / f"{variant}.csv"

    # ------------------------------------------------------------------ compare, register
    @property
    def leaderboard_csv(self) -> Path:
        return self.root / "reports" / "leaderboard.csv"

    @property
    def leaderboard_md(self) -> Path:
        return self.root / "reports" / "leaderboard.md"

    @property
    def registry_file(self) -> Path:
        return self.root / "reports" / "registry.json"

    @property
    def model_card_file(self) -> Path:
        return self.root / "reports" / "model_card.md"

    @property
    def disagreement_figure(self) -> Path:
        """The test images the last registered challenger and the champion it was gated against disagree on."""
        return self.root / "reports" / "disagreement.png"

    @property
    def champion_history(self) -> Path:
        """The champion history: a line per decision of the scheduled flow (this machine's)."""
        return self.root / "reports" / "history.jsonl"

    # ------------------------------------------------------------------ tracking
    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlruns_dir(self) -> Path:
        return self.root / "mlruns"

    # ------------------------------------------------------------------ tuning (not a DVC stage)
    def tune_report(self, variant: str) -> Path:
        return self.root / "reports" / "tune" / f"{variant}.json"

    @property
    def tune_storage(self) -> Path:
        """The Optuna studies' SQLite file, when PIPELINE_TUNE_STORAGE names no other storage."""
        return self.root / "optuna.db"

    def trial_work_dir(self, study: str, trial: int) -> Path:
        return self.root / ".cache" / "tune" / study / f"trial-{trial}"

    # ------------------------------------------------------------------ DVC
    def stage_outs(self, variants: list[str]) -> dict[str, list[Path]]:
        """What each DVC stage writes, as dvc.yaml declares it (`train@<variant>` per variant)."""
        return {
            "ingest": [self.raw_dir, self.ingest_report, self.samples_figure],
            "prepare": [self.prepared_dir, self.prepare_report, self.class_histogram_figure],
            **{f"train@{variant}": [self.model_dir(variant)] for variant in variants},
            "evaluate": [self.pictures_dir, self.scores_dir, self.metrics_dir, self.predictions_dir,
                         self.curves_dir],
            "compare": [self.leaderboard_md, self.leaderboard_csv],
            "register": [],
        }
