"""Training on several devices or hosts: the `tf.distribute` strategy that `train.distribution` names.

- `none`: no strategy object at all, so a single-process fit runs exactly the code (and gives exactly the
  bytes) it gave before this module existed;
- `mirrored`: `MirroredStrategy` over this machine's devices (several GPUs);
- `multi_worker`: `MultiWorkerMirroredStrategy` over the hosts listed in the TF_CONFIG environment
  variable; every host runs the same `python -m pipeline train <variant>`, and the worker with index 0
  (the chief) publishes the model. README, "Training on several hosts".

`train.batch_size` stays the global batch: each step splits it across the replicas and averages their
gradients, so a distributed fit takes the steps a single-process one takes.

The strategy must exist before TensorFlow runs its first op (MultiWorkerMirroredStrategy configures
the process's collective ops when it is created): `start` comes before anything else in the stage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ClusterError

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


@dataclass(frozen=True)
class Cluster:
    """The hosts of a multi-worker fit and which of them this process is."""

    workers: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        """Worker 0 writes the stage's outputs (TensorFlow's convention when the cluster has no `chief` job)."""
        return self.index == 0


SINGLE_PROCESS = Cluster(workers=("localhost",), index=0)


def read_cluster(environ: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster TF_CONFIG describes: `cluster.worker` (host:port, one per worker) and `task.index`."""
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        raise ClusterError(f"train.distribution is multi_worker but {TF_CONFIG} is not set: set it on every "
                           f"host, with that host's own task index, e.g. {TF_CONFIG}='{TF_CONFIG_EXAMPLE}'")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ClusterError(f"{TF_CONFIG} is not valid JSON ({error}); expected e.g. {TF_CONFIG_EXAMPLE}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise ClusterError(f"{TF_CONFIG}: cluster.worker must be a list of host:port addresses, one per worker "
                           f"(got {workers!r}); e.g. {TF_CONFIG_EXAMPLE}")
    if isinstance(cluster, dict) and set(cluster) - {"worker"}:
        # Other jobs (chief, ps, evaluator) belong to other strategies; worker 0 is the chief here.
        raise ClusterError(f"{TF_CONFIG}: cluster may only list `worker` (worker 0 is the chief), "
                           f"not {sorted(set(cluster) - {'worker'})}")
    if not isinstance(task, dict) or task.get("type") != "worker":
        raise ClusterError(f"{TF_CONFIG}: task.type must be \"worker\" (got {task!r})")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(workers):
        raise ClusterError(f"{TF_CONFIG}: task.index must be this host's position in cluster.worker, "
                           f"0..{len(workers) - 1} (got {index!r})")
    return Cluster(workers=tuple(workers), index=index)


def start(distribution: str) -> tuple[Any | None, Cluster]:
    """The strategy for `train.distribution` (None for `none`) and this process's place in the cluster.

    Call before TensorFlow runs any op. A multi-worker strategy waits for its peers at its first
    collective operation (the first step), not here.
    """
    if distribution == "none":
        return None, SINGLE_PROCESS
    if distribution == "mirrored":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(), SINGLE_PROCESS
    if distribution == "multi_worker":
        cluster = read_cluster()  # before TensorFlow reads TF_CONFIG itself, with a clearer error
        return _multi_worker_strategy(), cluster
    raise ValueError(f"unknown train.distribution {distribution!r}")


def _multi_worker_strategy() -> Any:
    """MultiWorkerMirroredStrategy, with the reduction Keras 3's `fit` needs across workers.

    Keras 3.15's TensorFlow trainer calls `strategy.reduce` on a nested structure (the first batch, to
    build the model symbolically) and with `axis=0` on scalar metrics; across several workers
    TensorFlow's collective reduce takes one tensor and rejects both ("Attempt to convert a value
    (PerReplica...) to a Tensor", "Invalid reduction dimension 0 for input with 0 dimensions";
    keras-team/keras#20585, tensorflow/tensorflow#72388). Reducing each tensor of the structure, and a
    scalar over the replicas only, is what a single worker's reduce does already.
    """
    import tensorflow as tf

    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
            def reduce_one(item: Any) -> Any:
                local = item.values[0] if isinstance(item, tf.distribute.DistributedValues) else item
                scalar = axis is not None and local.shape.rank == 0
                return super(KerasMultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, item, axis=None if scalar else axis)

            return tf.nest.map_structure(reduce_one, value)

    return KerasMultiWorkerMirroredStrategy()
