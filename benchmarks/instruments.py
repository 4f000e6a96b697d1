"""Measurement hooks that leave the measured code unchanged.

`instrument_fit()` wraps `keras.Model.fit` for the duration of a block so that every fit, the
pipeline's and the bare script's alike, gets the same epoch clock appended to its callbacks; it can
also inject `steps_per_execution` into `compile` (a candidate speed-up). `phase_timers()` wraps named
functions with wall-clock timers (for the stage breakdowns).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import time
from collections.abc import Iterator
from typing import Any


def _epoch_clock() -> Any:
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Wall and process CPU time (all threads) at the start of training and at the end of each epoch
        (after validation)."""

        def __init__(self) -> None:
            super().__init__()
            self.train_begin: float | None = None
            self.train_begin_cpu: float | None = None
            self.epoch_ends: list[float] = []
            self.epoch_ends_cpu: list[float] = []
            self.steps: list[int] = []  # training steps Keras ran in each epoch
            self._last_batch = -1

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.train_begin, self.train_begin_cpu = time.perf_counter(), time.process_time()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._last_batch = -1

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self._last_batch = batch  # with steps_per_execution, called once per execution with its last step

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_ends.append(time.perf_counter())
            self.epoch_ends_cpu.append(time.process_time())
            self.steps.append(self._last_batch + 1)

    return EpochClock()


def throughput(clock: Any, train_images: int, batch_size: int) -> dict[str, Any]:
    """First epoch (tracing, compilation, warm-up) apart; steady images/s over the later epochs.

    The rule: steady throughput = training images x (epochs - 1) / (end of last epoch - end of the
    first epoch). Each interval holds one training pass, one validation pass and the per-epoch
    callbacks (for the pipeline: BackupAndRestore's checkpoint, the CSV log, early stopping).
    The same with process CPU time instead of wall time (images per CPU-second) hardly moves with the
    load of other processes, but it cannot see gains from overlap (prefetching) or idle waiting.
    """
    ends, cpu_ends = clock.epoch_ends, clock.epoch_ends_cpu
    first = ends[0] - clock.train_begin if ends and clock.train_begin else None
    # Images in the measured epochs: an epoch of Keras may run more steps than one pass over the data
    # (steps_per_execution not dividing steps_per_epoch over a dataset spanning all epochs).
    expected_steps = -(-train_images // batch_size)
    images = sum(min(steps, expected_steps) * train_images / expected_steps + max(0, steps - expected_steps)
                 * batch_size for steps in clock.steps[1:])
    steady = steady_cpu = None
    if len(ends) >= 2 and ends[-1] > ends[0]:
        steady = images / (ends[-1] - ends[0])
    if len(cpu_ends) >= 2 and cpu_ends[-1] > cpu_ends[0]:
        steady_cpu = images / (cpu_ends[-1] - cpu_ends[0])
    epoch_seconds = [round(later - earlier, 4) for earlier, later in itertools.pairwise(ends)]
    return {"first_epoch_seconds": first, "steady_images_per_second": steady,
            "steady_images_per_cpu_second": steady_cpu, "epochs": len(ends), "steps_per_epoch_run": clock.steps,
            "later_epoch_seconds": epoch_seconds}


@contextlib.contextmanager
def instrument_fit(records: list[dict[str, Any]], steps_per_execution: int | None = None) -> Iterator[None]:
    """Append an epoch clock to every `fit` in the block; record its times in `records`."""
    import keras

    original_fit, original_compile = keras.Model.fit, keras.Model.compile

    @functools.wraps(original_fit)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        clock = _epoch_clock()
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), clock]
        started, started_cpu = time.perf_counter(), time.process_time()
        history = original_fit(self, *args, **kwargs)
        records.append({"fit_seconds": time.perf_counter() - started,
                        "fit_cpu_seconds": time.process_time() - started_cpu, "clock": clock,
                        "jit_compile_effective": bool(self.jit_compile),
                        "steps_per_execution": int(getattr(self, "steps_per_execution", 1) or 1),
                        "last_val_accuracy": (history.history.get("val_accuracy") or [None])[-1]})
        return history

    @functools.wraps(original_compile)
    def compile_(self: Any, *args: Any, **kwargs: Any) -> Any:
        if steps_per_execution:
            kwargs["steps_per_execution"] = steps_per_execution
        return original_compile(self, *args, **kwargs)

    keras.Model.fit, keras.Model.compile = fit, compile_
    try:
        yield
    finally:
        keras.Model.fit, keras.Model.compile = original_fit, original_compile


@contextlib.contextmanager
def phase_timers(targets: dict[str, str], totals: dict[str, float]) -> Iterator[None]:
    """Time calls of `module:attribute` targets, e.g. {"fit": "keras:Model.fit"}; seconds add up in
    `totals` (nested targets overlap: the caller subtracts). Restored on exit."""
    restore: list[tuple[Any, str, Any]] = []
    for label, target in targets.items():
        module_name, _, attribute_path = target.partition(":")
        owner: Any = importlib.import_module(module_name)
        *parents, name = attribute_path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = getattr(owner, name)

        def timed(*args: Any, __original: Any = original, __label: str = label, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                totals[__label] = totals.get(__label, 0.0) + time.perf_counter() - started

        functools.update_wrapper(timed, original)
        restore.append((owner, name, original))
        setattr(owner, name, timed)
    try:
        yield
    finally:
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)
