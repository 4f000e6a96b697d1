"""The `train` stage: fit one variant on the prepared data, resumably and reproducibly.

Crash safety lives in a work directory outside DVC's outputs (`.cache/train/<variant>/`), because
`dvc repro` deletes a stage's outputs before rerunning it:
- `backup/`: Keras `BackupAndRestore` state, so a killed run continues from its last finished epoch,
  and `backup_manifest.json`, the sha256 of that state, which tells a complete backup from a damaged one;
- `trained/`: the finished model, kept until it is tracked, so a tracking failure never costs a
  retraining. The work directory is removed once the stage has fully succeeded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig, TrainConfig
from pipeline.io import atomic_path, write_json, write_text
from pipeline.lineage import file_sha256
from pipeline.models import augmentation_layers, build_model
from pipeline.prepare import PreparedData


@dataclass
class TrainResult:
    """What training produced; `info` is written as training.json."""

    model: Any  # keras.Model
    history: dict[str, list[float]]
    summary: str
    info: dict[str, Any] = field(default_factory=dict)


def variant_fingerprint(config: PipelineConfig, variant: str, data_version: str) -> str:
    """Identifies one training job: the variant's layers, resolved training settings, seed, data."""
    payload = {
        "layers": [layer.model_dump() for layer in config.variant(variant).layers],
        "train": config.train_config(variant).model_dump(),
        "seed": config.seed,
        "data": data_version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _dataset(images: np.ndarray, labels: np.ndarray, settings: TrainConfig, num_classes: int,
             seed: int, epochs: range | None = None) -> Any:
    """Batches of (image, target); given `epochs`, the shuffled training batches of those epochs in a row.

    Each epoch is shuffled with a seed made of (seed, epoch number), so its order does not depend on
    how many epochs this process ran before: a run resumed from a backup gets the very batches the
    uninterrupted run got. (A reshuffling dataset would restart its sequence of orders after a resume.)
    """
    import keras
    import tensorflow as tf

    targets = labels
    if settings.loss == "categorical_crossentropy":  # one-hot labels, as seeds 000 and 003 do
        targets = keras.utils.to_categorical(labels, num_classes)
    examples = tf.data.Dataset.from_tensor_slices((images, targets)).cache()
    if epochs is None:
        return examples.batch(settings.batch_size).prefetch(tf.data.AUTOTUNE)
    batches = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(
        # train.epochs <= 1000 (config), so no two (seed, epoch) pairs share a shuffle seed.
        lambda epoch: examples.shuffle(len(labels), seed=seed * 1000 + epoch, reshuffle_each_iteration=False)
        .batch(settings.batch_size))
    return batches.prefetch(tf.data.AUTOTUNE)


def _optimizer(settings: TrainConfig, steps_per_epoch: int) -> Any:
    import keras

    learning_rate: Any = settings.learning_rate
    if settings.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            settings.learning_rate, decay_steps=max(1, settings.epochs * steps_per_epoch))
    optimizers = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                  "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}
    return optimizers[settings.optimizer](learning_rate=learning_rate)


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TF ops deterministic (same weights twice)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


BACKUP_MANIFEST = "backup_manifest.json"


def _seed_augmentation_per_epoch(model: Any, seed: int) -> Any:
    """A callback giving the augmentation layers' random state a value made of (seed, epoch) at each
    epoch start, as `_dataset` does for the shuffle order.

    Keras saves weights, not the augmentation layers' random-generator state: after a resume from a
    backup the layers would restart their random sequence, and the resumed run would train on other
    augmented images than the uninterrupted one.
    """
    import keras

    generators = [layer.generator for layer in augmentation_layers(model)]

    def reset(epoch: int, logs: Any = None) -> None:
        for index, generator in enumerate(generators):
            # [key, counter]: the counter advances by one per batch, so epochs stay 2**20 batches apart.
            generator.state.assign(np.array([seed + index, epoch << 20], dtype=generator.state.dtype))

    return keras.callbacks.LambdaCallback(on_epoch_begin=reset)


def _backup_digests(backup: Path) -> dict[str, str]:
    return {path.name: file_sha256(path) for path in sorted(backup.iterdir()) if path.is_file()}


def _record_backup(work_dir: Path, epochs_done: int) -> None:
    """Called right after Keras wrote its backup of an epoch: the manifest that vouches for it."""
    write_json(work_dir / BACKUP_MANIFEST, {"epoch": epochs_done, "files": _backup_digests(work_dir / "backup")})


def check_backup(work_dir: Path, epochs: int) -> tuple[int, str | None]:
    """The epoch an interrupted run's backup resumes from, or why it cannot be trusted.

    Keras overwrites its backup files in place at each epoch end and loads whatever it finds: a kill
    during that write, or later damage, would resume from the weights of one epoch labelled with
    another, or restart from epoch 0 with trained weights while looking like a resume. The manifest
    written after each complete backup is what makes a backup trustworthy.

    Returns:
        (epoch, None) for a usable backup (0 when there is none); (0, reason) for an unusable one.
    """
    backup = work_dir / "backup"
    if not backup.is_dir() or not any(backup.iterdir()):
        return 0, None
    try:
        manifest = json.loads((work_dir / BACKUP_MANIFEST).read_text())
    except (OSError, ValueError):
        return 0, f"no readable {BACKUP_MANIFEST} vouches for it (killed while Keras wrote it?)"
    changed = set(manifest.get("files", {}).items()) ^ set(_backup_digests(backup).items())
    if changed:
        names = ", ".join(sorted({name for name, _ in changed}))
        return 0, f"{names}: not the files recorded when the backup was written (truncated or modified)"
    epoch = manifest.get("epoch")
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        return 0, f"it records epoch {epoch!r}, not one of 1..{epochs}"
    return epoch, None


def fit_variant(config: PipelineConfig, variant: str, data: PreparedData, work_dir: Path,
                seed: int | None = None, verbose: int | str = "auto") -> TrainResult:
    """Build and fit one variant; resume from `work_dir` if an earlier run was interrupted.

    Args:
        config: the validated params.
        variant: a key of `config.models`.
        data: the prepared splits.
        work_dir: holds Keras' per-epoch backup (`backup/`) and the per-epoch history
            (`history.csv`, appended, so a resumed run keeps the epochs before the interruption).
        seed: overrides `config.seed` (multi-seed repeats).
        verbose: Keras verbosity; "auto" shows the progress bar in a terminal, one line per epoch
            otherwise (logs of DVC in CI, Prefect workers).

    Returns:
        The trained model, its history, a text summary and facts about the run.
    """
    import keras

    seed = config.seed if seed is None else seed
    settings = config.train_config(variant)
    set_determinism(seed)
    model = build_model(config.variant(variant).layers, data.input_shape, data.num_classes, name=variant,
                        augment=settings.augment, seed=seed)
    steps_per_epoch = int(np.ceil(len(data.y_train) / settings.batch_size))
    model.compile(optimizer=_optimizer(settings, steps_per_epoch), loss=settings.loss,
                  metrics=["accuracy"], jit_compile=settings.jit_compile)
    # BackupAndRestore makes Keras start at the epoch after the last backup: remember which one.
    epochs_started: list[int] = []
    counter = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_started.append(epoch))
    work_dir.mkdir(parents=True, exist_ok=True)
    history_file = work_dir / "history.csv"
    backup_dir = work_dir / "backup"
    resume_epoch, unusable = check_backup(work_dir, settings.epochs)
    resume_note = f"resuming from the backup in {backup_dir} after epoch {resume_epoch}" if resume_epoch else None
    if unusable:
        # Fall back rather than fail: the backup only saves time, and a fit from epoch 0 with the same
        # seed gives the model an uninterrupted run gives; failing would only make the user delete it.
        resume_note = f"the backup in {backup_dir} is unusable ({unusable}); training restarts from epoch 0"
        shutil.rmtree(backup_dir)
        history_file.unlink(missing_ok=True)  # its rows belong to the abandoned attempt
    if resume_note:
        print(f"[train {variant}] {resume_note}", flush=True)
    train_data = _dataset(data.x_train, data.y_train, settings, data.num_classes, seed,
                          epochs=range(resume_epoch, settings.epochs))
    val_data = _dataset(data.x_val, data.y_val, settings, data.num_classes, seed)
    manifest_file = work_dir / BACKUP_MANIFEST
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True),
        # Listed after BackupAndRestore, so called after it: the backup it vouches for is complete.
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: _record_backup(work_dir, epoch + 1),
                                       on_train_end=lambda logs: manifest_file.unlink(missing_ok=True)),
        keras.callbacks.CSVLogger(str(history_file), append=True),
        counter,
        _seed_augmentation_per_epoch(model, seed),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.early_stopping_patience,
                                      restore_best_weights=True),
    ]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    # One iterator over all epochs' batches (steps_per_epoch given): Keras does not restart it per epoch.
    fitted = model.fit(train_data, validation_data=val_data, epochs=settings.epochs, steps_per_epoch=steps_per_epoch,
                       callbacks=callbacks, shuffle=False, verbose=verbose)  # the tf.data pipeline shuffles
    seconds = time.perf_counter() - started
    epochs_run = len(next(iter(fitted.history.values()), []))
    history = read_history(history_file)
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
    info = {
        "variant": variant,
        "seed": seed,
        "params": int(model.count_params()),
        "epochs_requested": settings.epochs,
        "epochs_run": len(history.get("loss", [])),
        "epochs_run_this_process": epochs_run,
        "resumed_from_epoch": epochs_started[0] if epochs_started else resume_epoch,
        "resume_note": resume_note,
        "train_seconds": round(seconds, 3),
        "images_per_second": round(epochs_run * len(data.y_train) / seconds, 1) if seconds > 0 else None,
        "train_images": len(data.y_train),
        "best_val_accuracy": max(history.get("val_accuracy", [float("nan")])),
        "final_val_accuracy": history.get("val_accuracy", [float("nan")])[-1],
    }
    return TrainResult(model=model, history=history, summary="\n".join(lines), info=info)


def read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch metrics from Keras' CSVLogger; an epoch redone after a kill keeps its last row."""
    import pandas as pd

    table = pd.read_csv(path).drop_duplicates(subset="epoch", keep="last").sort_values("epoch")
    ordered = [name for name in ("loss", "accuracy", "val_loss", "val_accuracy") if name in table]
    others = [name for name in table.columns if name not in ordered and name not in ("epoch", "learning_rate")]
    return {name: [float(value) for value in table[name]] for name in ordered + others}


def save_trained(result: TrainResult, directory: Path) -> dict[str, Path]:
    """Write model.keras, history.json, summary.txt, training.json (each atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in ("model.keras", "history.json", "summary.txt", "training.json")}
    with atomic_path(paths["model.keras"]) as temporary:
        result.model.save(temporary)
    result.info["model_sha256"] = file_sha256(paths["model.keras"])
    write_json(paths["history.json"], result.history)
    write_text(paths["summary.txt"], result.summary + "\n")
    write_json(paths["training.json"], result.info)
    return paths


def load_trained(directory: Path) -> TrainResult:
    """Read back what `save_trained` wrote (safe mode: no Lambda layers or arbitrary code)."""

    info = json.loads((directory / "training.json").read_text())
    model = load_model_checked(directory / "model.keras", info.get("model_sha256"))
    return TrainResult(model=model, history=json.loads((directory / "history.json").read_text()),
                       summary=(directory / "summary.txt").read_text().rstrip("\n"), info=info)


def load_model_checked(path: Path, expected_sha256: str | None = None) -> Any:
    """Load a `.keras` file in safe mode, after checking its sha256 when one was recorded."""
    import keras

    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: only the .keras format is loaded (not {path.suffix or 'no suffix'}); "
                         "legacy .h5/SavedModel files can execute code")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise ValueError(f"{path}: sha256 {actual} differs from the recorded {expected_sha256}; "
                             "the file was modified or corrupted after training")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, zipfile.BadZipFile) as error:
        # Safe mode refuses a Lambda with ValueError but an object from a module outside Keras with
        # TypeError; either way the caller (and the CLI's one-line error) gets a ValueError naming the file.
        raise ValueError(f"{path}: refused by Keras safe mode or unreadable "
                         f"({type(error).__name__}: {error})") from error


class WorkDir:
    """`.cache/train/<variant>/`: the crash-safety state of one training job."""

    def __init__(self, root: Path, variant: str, fingerprint: str) -> None:
        self.path = root / ".cache" / "train" / variant
        self.fingerprint = fingerprint
        self.backup = self.path / "backup"
        self.trained = self.path / "trained"
        self.run_id_file = self.path / "mlflow_run_id"

    def open(self) -> str | None:
        """Discard state left by a different job; return a note on what is being reused."""
        stamp = self.path / "fingerprint"
        if stamp.is_file() and stamp.read_text().strip() != self.fingerprint:
            shutil.rmtree(self.path)
            note = "discarded interrupted state of a different configuration"
        elif (self.trained / "training.json").is_file():
            note = f"reusing the finished training in {self.trained} (it was not tracked yet)"
        elif self.backup.is_dir() and any(self.backup.iterdir()):
            note = f"found the backup of an interrupted run in {self.backup}"  # fit_variant checks it
        else:
            note = None
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(stamp, self.fingerprint + "\n")
        return note

    def has_trained(self) -> bool:
        return (self.trained / "training.json").is_file()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def seed_repeats(config: PipelineConfig, variant: str, data: PreparedData, first: TrainResult,
                 work_dir: Path) -> list[dict[str, float]]:
    """Train `train.seeds - 1` more copies with other seeds, to tell a real difference from noise.

    Only the first seed's model is kept; the others give validation and test accuracy per seed,
    from which the leaderboard shows mean and 95% confidence interval. (Test accuracy is reported,
    never used to choose.)
    """
    def accuracies(model: Any) -> dict[str, float]:
        return {f"{split}_accuracy": float((np.asarray(model.predict(getattr(data, f"x_{split}"), batch_size=512,
                                                                      verbose=0)).argmax(axis=1)
                                            == getattr(data, f"y_{split}")).mean())
                for split in ("val", "test")}

    repeats = [{"seed": first.info["seed"], **accuracies(first.model)}]
    for offset in range(1, config.train_config(variant).seeds):
        seed = config.seed + offset
        print(f"[train {variant}] extra seed {offset}/{config.train_config(variant).seeds - 1}: {seed}", flush=True)
        extra = fit_variant(config, variant, data, work_dir / f"seed-{seed}", seed=seed)
        repeats.append({"seed": seed, **accuracies(extra.model)})
    return repeats


def run_training(config: PipelineConfig, variant: str, root: Path, track: bool = True,
                 extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole `train` stage for one variant: fit (or resume), write models/<variant>/, track.

    Args:
        config: the validated params.
        variant: a key of `config.models`.
        root: the project directory (holds data/, models/, .cache/).
        track: log the run to MLflow (off for benchmarks that measure bare training).
        extra_tags: more MLflow tags (e.g. the Prefect flow-run id).

    Returns:
        training.json's content plus the MLflow run id and model URI when tracked.
    """
    from pipeline import tracking
    from pipeline.lineage import dvc_md5, git_commit
    from pipeline.prepare import load_prepared

    prepared_dir = root / "data" / "prepared"
    out_dir = root / "models" / variant
    data_version = dvc_md5(prepared_dir)
    experiment_id = tracking.setup(root, config.mlflow.experiment_name) if track else None
    work = WorkDir(root, variant, variant_fingerprint(config, variant, data_version))
    note = work.open()
    if note:
        print(f"[train {variant}] {note}", flush=True)
    if work.has_trained():
        result = load_trained(work.trained)
    else:
        data = load_prepared(prepared_dir)
        result = fit_variant(config, variant, data, work.path)
        if config.train_config(variant).seeds > 1:
            result.info["seed_repeats"] = seed_repeats(config, variant, data, result, work.path)
        save_trained(result, work.trained)
    result.info.update({"data_version": data_version, "params_hash": config.params_hash(),
                        "git_commit": git_commit(root)})
    paths = save_trained(result, out_dir)
    if track:
        kept = (f"logging the run of {variant} (the finished training is kept in {work.trained} and is "
                "logged without retraining when the stage is rerun)")
        with tracking.outage_reported(root, kept):
            result.info.update(_track(config, variant, result, paths, work, experiment_id, extra_tags or {},
                                      root))
        write_json(out_dir / "run.json", {key: result.info[key] for key in ("run_id", "model_uri")})
    work.close()
    return result.info


def _track(config: PipelineConfig, variant: str, result: TrainResult, paths: dict[str, Path], work: WorkDir,
           experiment_id: str, extra_tags: dict[str, str], root: Path) -> dict[str, str]:
    """Log the finished training as one MLflow run; a run left by a killed attempt is marked FAILED."""
    import os

    from pipeline import tracking
    from pipeline.prepare import load_prepared

    if work.run_id_file.is_file():  # a run opened by an attempt that died: never leave it RUNNING
        ghost = work.run_id_file.read_text().strip()
        if tracking.run_status(ghost) == "RUNNING":
            tracking.mark_failed(ghost)
    tags = {
        "variant": variant,
        "git_commit": result.info["git_commit"],
        "data_version": result.info["data_version"],
        "params_hash": result.info["params_hash"],
        # Groups the runs of one pipeline execution: `make repro` and the Prefect flow set it.
        "run_group": os.environ.get("PIPELINE_RUN_GROUP", f"{result.info['git_commit'][:12]}-"
                                                          f"{result.info['data_version'][:8]}"),
        **extra_tags,
    }
    resolved = {**config.model_dump(mode="json", exclude={"models"}),
                "train": config.train_config(variant).model_dump(mode="json"),
                "variant": config.variant(variant).model_dump(mode="json")}
    params = tracking.flatten(resolved)
    params.update({"model.params": str(result.info["params"]), "variant.name": variant})
    example = np.asarray(load_prepared(root / "data" / "prepared", mmap=True).x_val[:5])
    with tracking.training_run(experiment_id, run_name=variant, tags=tags) as run_id:
        write_text(work.run_id_file, run_id)
        tracking.log_training(params, result.history, resolved, result.summary,
                              [paths["history.json"], paths["training.json"]])
        model_uri = tracking.log_keras_model(result.model, example)
    return {"run_id": run_id, "model_uri": model_uri}
