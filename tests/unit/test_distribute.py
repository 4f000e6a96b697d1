"""`train.distribution` and TF_CONFIG: the cluster a multi-worker fit reads, and its clear errors."""

from __future__ import annotations

import json

import pytest

from pipeline.config import parse_params
from pipeline.distribute import Cluster, read_cluster
from pipeline.errors import ClusterError, ParamsError
from tests.conftest import tiny_params


def tf_config(workers: object = ("a:1", "b:2"), index: object = 1, task_type: str = "worker") -> dict[str, str]:
    workers = list(workers) if isinstance(workers, tuple) else workers
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": task_type, "index": index}})}


def test_cluster_from_tf_config() -> None:
    assert read_cluster(tf_config()) == Cluster(workers=("a:1", "b:2"), index=1)
    assert not read_cluster(tf_config()).is_chief
    assert read_cluster(tf_config(index=0)).is_chief


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "TF_CONFIG is not set"),
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid JSON"),
    (tf_config(workers=[]), "cluster.worker must be a list of host:port"),
    (tf_config(workers=["no-port"]), "cluster.worker must be a list of host:port"),
    (tf_config(index=2), "task.index must be this host's position in cluster.worker, 0..1"),
    (tf_config(index="0"), "task.index"),
    (tf_config(task_type="chief"), 'task.type must be "worker"'),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]},
                               "task": {"type": "worker", "index": 0}})}, "may only list `worker`"),
])
def test_bad_tf_config_names_it(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ClusterError, match="TF_CONFIG") as error:
        read_cluster(environ)
    assert expected in str(error.value)


def test_distribution_is_validated_and_defaults_to_none() -> None:
    params = tiny_params(("three_conv",))
    assert parse_params(params).variant("three_conv").train.distribution == "none"
    params["train"]["distribution"] = "horovod"
    with pytest.raises(ParamsError, match=r"train\.distribution"):
        parse_params(params)


def test_none_leaves_the_settings_as_they_were() -> None:
    """params_hash and training.json of a single-process fit do not change with the new key."""
    params = tiny_params(("three_conv",))
    single = parse_params(params).variant("three_conv")
    assert "distribution" not in single.settings()["train"]
    params["models"]["three_conv"]["train"]["distribution"] = "multi_worker"
    multi = parse_params(params).variant("three_conv")
    assert multi.settings()["train"]["distribution"] == "multi_worker"
    assert multi.params_hash() != single.params_hash()


def test_extra_seeds_are_refused_with_multi_worker() -> None:
    params = tiny_params(("three_conv",))
    params["train"]["seeds"] = 3
    params["models"]["three_conv"]["train"]["distribution"] = "multi_worker"
    with pytest.raises(ParamsError, match=r"models\.three_conv\.train: seeds > 1 is not supported"):
        parse_params(params)
