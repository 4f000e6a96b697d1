"""The `train` stage: fit one variant on the prepared data, resumably and reproducibly.

`fit_variant` is the core (a resolved variant and data in, a trained model out); `run_train` is the
stage: resume or fit, publish `models/<variant>/`, write the run record that the evaluate stage logs to
MLflow. Crash safety: `pipeline/checkpoint.py`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import distribute, monitor
from pipeline.checkpoint import WorkDir, backup_bytes, check_backup
from pipeline.config import PipelineConfig, TrainConfig, Variant
from pipeline.dataset import SPLITS, PreparedData, load_prepared, model_outputs, normalise
from pipeline.io import atomic_directory, read_json, write_json
from pipeline.layout import Layout
from pipeline.model_files import TrainedModel, load_trained, save_trained
from pipeline.models import augmentation_layers, build_model

# How often a long epoch reports its progress when Keras prints one line per epoch.
PROGRESS_SECONDS = 30.0


def _dataset(images: np.ndarray, labels: np.ndarray, settings: TrainConfig, num_classes: int,
             seed: int, epochs: range | None = None, distributed: bool = False) -> Any:
    """Batches of (image, target); given `epochs`, the shuffled training batches of those epochs in a row.

    A stream, not a tensor of the split: tf.data shuffles and batches the row numbers, and each batch
    gathers its rows of the uint8 `images` and normalises them (`normalise`) on the way in, with
    prefetching. So no split is ever one tensor (TensorFlow's 2 GB graph-constant limit) nor float32
    in memory. Shuffling row numbers draws the very order that shuffling the images did (the order
    depends on the seed and the count, not on the elements).

    Each epoch is shuffled with a seed made of (seed, epoch number), so its order does not depend on
    how many epochs this process ran before: a run resumed from a backup gets the very batches the
    uninterrupted run got. (A reshuffling dataset would restart its sequence of orders after a resume.)

    `distributed`: the batches are global batches that a tf.distribute strategy splits across replicas.
    Sharded by DATA: every worker builds the same batches (same seeds) and keeps its part of each, so
    the replicas of a step see disjoint images and together the single-process batch. (AUTO would look
    for files to shard and fall back to DATA with a warning; OFF would give every worker the same images.)
    """
    import keras
    import tensorflow as tf

    targets = labels
    if settings.loss == "categorical_crossentropy":  # one-hot labels, as seeds 000 and 003 do
        targets = keras.utils.to_categorical(labels, num_classes)

    def gather(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return normalise(images[rows]), targets[rows]

    def load(rows: Any) -> tuple[Any, Any]:
        batch, batch_targets = tf.numpy_function(gather, [rows], (tf.float32, tf.as_dtype(targets.dtype)),
                                                 stateful=False)
        batch.set_shape((None, *images.shape[1:]))
        batch_targets.set_shape((None, *targets.shape[1:]))
        return batch, batch_targets

    rows = tf.data.Dataset.range(len(labels))
    if epochs is None:
        batches = rows.batch(settings.batch_size)
    else:
        batches = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(
            # train.epochs <= 1000 (config), so no two (seed, epoch) pairs share a shuffle seed.
            lambda epoch: rows.shuffle(len(labels), seed=seed * 1000 + epoch, reshuffle_each_iteration=False)
            .batch(settings.batch_size))
    batches = batches.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if distributed:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        batches = batches.with_options(options)
    return batches.prefetch(tf.data.AUTOTUNE)


def make_optimizer(settings: TrainConfig, steps_per_epoch: int) -> Any:
    """The optimizer the `train` block names, at its learning rate (cosine decay over the epochs when set)."""
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


def _epoch_progress(name: str, steps_per_epoch: int, epochs: int, batch_size: int) -> Any:
    """A callback printing `[train NAME] epoch 1/3: 4,000/11,719 batches, 3,050 images/s` to stderr every
    PROGRESS_SECONDS of an epoch: with one line per epoch (verbose 2, no terminal) a long epoch says nothing."""
    import keras

    state = {"epoch": 0, "started": 0.0, "last": 0.0}

    def begin(epoch: int, logs: Any = None) -> None:
        state.update(epoch=epoch, started=time.perf_counter(), last=time.perf_counter())

    def batch_end(batch: int, logs: Any = None) -> None:
        now = time.perf_counter()
        if now - state["last"] >= PROGRESS_SECONDS:
            state["last"] = now
            rate = (batch + 1) * batch_size / max(now - state["started"], 1e-9)
            print(f"[train {name}] epoch {state['epoch'] + 1}/{epochs}: {batch + 1:,}/{steps_per_epoch:,} batches, "
                  f"{rate:,.0f} images/s", file=sys.stderr, flush=True)

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_train_batch_end=batch_end)


def fit_variant(variant: Variant, data: PreparedData, work: WorkDir, verbose: int | str = "auto",
                callbacks: Sequence[Any] = (), system_metrics: bool = False, strategy: Any = None) -> TrainedModel:
    """Build and fit one variant; resume from `work`'s backup if an earlier run was interrupted.

    Args:
        variant: the resolved variant (`config.variant(name)`; `.with_seed(n)` for another seed).
        data: the prepared splits (the test split is not used: it may be left unloaded).
        work: the job's work directory (Keras' per-epoch backup and the per-epoch history).
        verbose: Keras verbosity; "auto" shows the progress bar in a terminal, one line per epoch
            otherwise (logs of DVC in CI, Prefect workers).
        callbacks: more Keras callbacks, called after the fit's own at each epoch end (so the epoch
            is already backed up and in the history when they run), e.g. a tuning trial's pruning.
        system_metrics: sample the machine's CPU and memory during the fit (pipeline/monitor.py).
        strategy: a `tf.distribute` strategy to fit under (`distribute.start`); None fits in this process
            alone. With several workers, each passes its own `work` (their backups must not collide).

    Returns:
        The trained model, its history, a text summary, the facts of the training (reproducible:
        `training.json`) and of this run (seconds, resume: `run`).
    """
    import keras

    settings = variant.train
    set_determinism(variant.seed)
    steps_per_epoch = int(np.ceil(len(data.y_train) / settings.batch_size))  # batch_size is the global batch
    # Variables created in a strategy's scope are mirrored on every replica; without one, no scope at all.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(variant.layers, data.input_shape, data.num_classes, name=variant.name,
                            augment=settings.augment, seed=variant.seed)
        model.compile(optimizer=make_optimizer(settings, steps_per_epoch), loss=settings.loss,
                      metrics=["accuracy"], jit_compile=settings.jit_compile)
    work.path.mkdir(parents=True, exist_ok=True)
    resume_epoch, unusable = check_backup(work, settings.epochs)
    resume_note = f"resuming from the backup in {work.backup} after epoch {resume_epoch}" if resume_epoch else None
    if unusable:
        # Fall back rather than fail: the backup only saves time, and a fit from epoch 0 with the same
        # seed gives the model an uninterrupted run gives; failing would only make the user delete it.
        resume_note = f"the backup in {work.backup} is unusable ({unusable}); training restarts from epoch 0"
        work.discard_backup()
    if resume_note:
        print(f"[train {variant.name}] {resume_note}", flush=True)
    distributed = strategy is not None
    train_data = _dataset(data.x_train, data.y_train, settings, data.num_classes, variant.seed,
                          epochs=range(resume_epoch, settings.epochs), distributed=distributed)
    val_data = _dataset(data.x_val, data.y_val, settings, data.num_classes, variant.seed, distributed=distributed)
    all_callbacks = [
        # Listed before BackupAndRestore, so called before it writes the epoch's backup (the optimizer's
        # variables, part of the backup, exist from the first step on).
        keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: work.check_space(backup_bytes(model), epoch + 1)),
        keras.callbacks.BackupAndRestore(str(work.backup), delete_checkpoint=True),
        # Listed after BackupAndRestore, so called after it: the backup it vouches for is complete.
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: work.record_backup(epoch + 1),
                                       on_train_end=lambda logs: work.manifest.unlink(missing_ok=True)),
        keras.callbacks.CSVLogger(str(work.history), append=True),
        _seed_augmentation_per_epoch(model, variant.seed),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.early_stopping_patience,
                                      restore_best_weights=True),
        *callbacks,
    ]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if verbose == 2:
        all_callbacks.append(_epoch_progress(variant.name, steps_per_epoch, settings.epochs, settings.batch_size))
    started, started_ms = time.perf_counter(), int(time.time() * 1000)
    # One iterator over all epochs' batches (steps_per_epoch given): Keras does not restart it per epoch.
    with monitor.SystemMonitor(enabled=system_metrics) as sampler:
        fitted = model.fit(train_data, validation_data=val_data, epochs=settings.epochs,
                           steps_per_epoch=steps_per_epoch, callbacks=all_callbacks, shuffle=False,
                           verbose=verbose)  # the tf.data pipeline shuffles
    seconds = time.perf_counter() - started
    epochs_this_process = len(next(iter(fitted.history.values()), []))
    history = read_history(work.history)
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
    training = {
        "variant": variant.name,
        "seed": variant.seed,
        "params": int(model.count_params()),
        "epochs_requested": settings.epochs,
        "epochs_run": len(history.get("loss", [])),
        "train_images": len(data.y_train),
        "best_val_accuracy": max(history.get("val_accuracy", [float("nan")])),
        "final_val_accuracy": history.get("val_accuracy", [float("nan")])[-1],
    }
    if strategy is not None:  # the replica count changes the numbers (how each batch is split)
        training["replicas"] = int(strategy.num_replicas_in_sync)
    run = {
        "train_seconds": round(seconds, 3),
        "images_per_second": round(epochs_this_process * len(data.y_train) / seconds, 1) if seconds > 0 else None,
        "epochs_run_this_process": epochs_this_process,
        "resumed_from_epoch": resume_epoch,
        "resume_note": resume_note,
        # The run's start and end in MLflow: the fit's, not the moment it was logged.
        "fit_started_ms": started_ms,
        "fit_ended_ms": started_ms + int(seconds * 1000),
        **sampler.record(),
    }
    return TrainedModel(model=model, history=history, summary="\n".join(lines), training=training, run=run)


def read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch metrics from Keras' CSVLogger; an epoch redone after a kill keeps its last row."""
    import pandas as pd

    table = pd.read_csv(path).drop_duplicates(subset="epoch", keep="last").sort_values("epoch")
    ordered = [name for name in ("loss", "accuracy", "val_loss", "val_accuracy") if name in table]
    others = [name for name in table.columns if name not in ordered and name not in ("epoch", "learning_rate")]
    return {name: [float(value) for value in table[name]] for name in ordered + others}


def seed_repeats(variant: Variant, data: PreparedData, first: TrainedModel, work: WorkDir) -> list[dict[str, float]]:
    """Train `train.seeds - 1` more copies with other seeds, to tell a real difference from noise.

    Only the first seed's model is kept; the others give validation and test accuracy per seed,
    from which the leaderboard shows mean and 95% confidence interval. (Test accuracy is reported,
    never used to choose.)
    """
    def accuracies(model: Any) -> dict[str, float]:
        return {f"{split}_accuracy": float((model_outputs(model, data.split(split)[0], 512).argmax(axis=1)
                                            == data.split(split)[1]).mean())
                for split in ("val", "test")}

    repeats = [{"seed": variant.seed, **accuracies(first.model)}]
    for offset in range(1, variant.train.seeds):
        seed = variant.seed + offset
        print(f"[train {variant.name}] extra seed {offset}/{variant.train.seeds - 1}: {seed}", flush=True)
        extra = fit_variant(variant.with_seed(seed), data, work.for_seed(seed))
        repeats.append({"seed": seed, **accuracies(extra.model)})
    return repeats


def publish(trained_dir: Path, model_dir: Path) -> None:
    """Copy the finished training's files, the very bytes the fit saved, into the DVC output at once."""
    with atomic_directory(model_dir) as staging:
        for path in sorted(trained_dir.iterdir()):
            shutil.copy2(path, staging / path.name)


def run_train(config: PipelineConfig, name: str, root: Path, track: bool = True,
              extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole `train` stage for one variant: fit (or resume), publish models/<variant>/, record the run.

    The stage does not import MLflow: the evaluate stage logs each training as an MLflow run, in one
    process for all variants (importing MLflow and opening its store costs about 2.5 s per process;
    benchmarks/results.md). With `track`, a tracking server that is down fails the stage here, before
    the fit, rather than in the evaluate stage after it.

    Args:
        config: the validated params.
        name: a key of `config.models`.
        root: the project directory (holds data/, models/, .cache/).
        track: check the tracking server first (off for benchmarks that measure bare training).
        extra_tags: more MLflow tags for the run the evaluate stage logs (e.g. the Prefect flow-run id).

    With `train.distribution: multi_worker` every host of TF_CONFIG runs this same function. Worker 0
    (the chief) does all of the above; any other worker fits with it in its own work directory, saves
    its model there only to report the model's digest (`model_digest`, equal to the chief's when the
    workers stayed in step), removes the directory and publishes nothing.

    Returns:
        training.json's content and this run's facts (seconds, resume), as the run record holds them;
        a non-chief worker's has `worker` (its index) and `published: False`.
    """
    from pipeline import tracking
    from pipeline.lineage import dvc_md5, git_commit

    variant = config.variant(name)
    strategy, cluster = distribute.start(variant.train.distribution)  # before TensorFlow runs any op
    layout = Layout(root)
    if track and cluster.is_chief:
        tracking.check_server(tracking.tracking_uri(root))  # plain HTTP: MLflow is not imported here
    data_version = dvc_md5(layout.prepared_dir)
    work_path = layout.work_dir(name) if cluster.is_chief else layout.worker_work_dir(name, cluster.index)
    work = WorkDir(work_path, variant.fingerprint(data_version))
    note = work.open()
    if note:
        print(f"[train {name}] {note}", flush=True)
    # A finished, unpublished fit is reused only by a single process: a chief that skipped the fit would
    # leave the other workers waiting for it at their first step.
    if work.has_trained() and len(cluster.workers) == 1:
        trained = load_trained(work.trained)
        trained.run = read_json(work.run_facts) if work.run_facts.is_file() else {}
    else:
        # The test split only for seed repeats' test accuracies (reported, never used to choose).
        data = load_prepared(layout, splits=SPLITS if variant.train.seeds > 1 else ("train", "val"))
        trained = fit_variant(variant, data, work, system_metrics=monitor.enabled(), strategy=strategy)
        trained.training.update({"data_version": data_version, "params_hash": variant.params_hash(),
                                 "settings": variant.settings()})
        if variant.train.seeds > 1:
            trained.training["seed_repeats"] = seed_repeats(variant, data, trained, work)
        save_trained(trained, work.trained)
        write_json(work.run_facts, trained.run)
    if not cluster.is_chief:
        work.close()
        return {**trained.training, **trained.run, "worker": cluster.index, "published": False}
    publish(work.trained, layout.model_dir(name))
    # What the evaluate stage logs as the run's lineage and times (not a DVC output: seconds and
    # commits differ from run to run; the evaluate stage adds the run's id once logged).
    run = {**trained.run, "variant": name, "git_commit": git_commit(root), "data_version": data_version,
           "model_digest": trained.training["model_digest"], "tags": dict(extra_tags or {})}
    write_json(layout.run_record(name), run)
    work.close()
    return {**trained.training, **run}
