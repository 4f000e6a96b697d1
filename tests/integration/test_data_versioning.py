"""The user's images as a DVC-versioned input, on real DVC repositories: a folder in data/source/
(dvc add), and an S3 bucket on a local S3 server (dvc import-url, dvc update)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.demo import write_digits
from pipeline.layout import Layout
from pipeline.sources import read_bundled
from tests.conftest import make_project, run, tiny_params

pytestmark = pytest.mark.slow

DIGITS = Path("data") / "source" / "digits"


def folder_params(**data: object) -> dict:
    params = tiny_params(("three_conv",))
    params["data"].update({"source": "folder", "path": str(DIGITS), "max_images": None,
                           "class_names": [str(digit) for digit in range(10)], **data})
    return params


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    bundled = read_bundled()
    order = np.random.default_rng(1).permutation(bundled.y_train.size)  # the sample is sorted by class
    return bundled.x_train[order], bundled.y_train[order]


def model_digest(project: Path) -> str:
    return json.loads(Layout(project).training_file("three_conv").read_text())["model_digest"]


def test_local_images_are_versioned_and_an_old_model_is_reproduced(tmp_path: Path, digits: tuple) -> None:
    """Adding, changing or removing one image is seen by `dvc status`; `git checkout <old> && dvc
    checkout` restores exactly the images of the old commit, and retraining on them gives the old
    model's weights (the same digest)."""
    images, labels = digits
    project = make_project(tmp_path / "project", folder_params())
    write_digits(project / DIGITS, images[:300], labels[:300], 0)
    assert "dvc add" in run(["python", "-m", "pipeline", "source"], project).stdout
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "300 images"], project)
    first_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    first_digest, first_files = model_digest(project), sorted(p.name for p in (project / DIGITS).rglob("*.png"))
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."

    new = project / DIGITS / str(labels[300]) / "00300.png"
    write_digits(project / DIGITS, images[300:301], labels[300:301], 300)  # one image added
    assert "data/source" in run(["dvc", "status"], project).stdout
    new.unlink()
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."
    changed = next((project / DIGITS).rglob("*.png"))
    original = changed.read_bytes()
    write_digits(project / DIGITS, images[:1] // 2, labels[:1], 0)  # one image changed (darker)
    changed = project / DIGITS / str(labels[0]) / "00000.png"
    assert changed.read_bytes() != original and "modified" in run(["dvc", "status"], project).stdout
    changed.write_bytes(original)
    removed = next((project / DIGITS).rglob("*.png"))
    saved = removed.read_bytes()
    removed.unlink()  # one image removed
    assert "modified" in run(["dvc", "status"], project).stdout
    removed.write_bytes(saved)

    write_digits(project / DIGITS, images[300:400], labels[300:400], 300)  # the data grows
    run(["dvc", "repro"], project)  # versions the new images (data/source/digits.dvc) and retrains
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "400 images"], project)
    assert model_digest(project) != first_digest

    run(["git", "checkout", "-q", first_commit], project)
    run(["dvc", "checkout", "--force"], project)
    assert sorted(p.name for p in (project / DIGITS).rglob("*.png")) == first_files
    assert model_digest(project) == first_digest  # the old model's files, restored
    run(["dvc", "repro", "--force", "--single-item", "train@three_conv"], project)
    assert model_digest(project) == first_digest  # and retrained: the same weights


@pytest.fixture
def s3_server() -> Iterator[str]:
    """A local S3 server (moto) with a bucket, and the environment that reaches it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _upload(endpoint: str, bucket: str, folder: Path, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    if bucket not in [found["Name"] for found in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*.png")):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


def test_an_s3_source_is_imported_checked_and_updated(tmp_path: Path, digits: tuple, s3_server: str) -> None:
    images, labels = digits
    staging = tmp_path / "staging"
    write_digits(staging, images[:200], labels[:200], 0)
    _upload(s3_server, "images", staging, "digits")
    params = folder_params(path="s3://images/digits", fs_config={"endpointurl": s3_server})
    project = make_project(tmp_path / "project", params)

    imported = run(["python", "-m", "pipeline", "source"], project).stdout
    assert "dvc import-url s3://images/digits -> data/source/digits" in imported
    assert len(list((project / DIGITS).rglob("*.png"))) == 200
    dvc_file = yaml.safe_load((project / "data" / "source" / "digits.dvc").read_text())
    assert dvc_file["deps"][0]["path"] == "s3://images/digits"
    run(["dvc", "repro", "ingest"], project)
    assert ": changed" in run(["python", "-m", "pipeline", "source", "--check"], project).stdout  # the first check
    assert ": unchanged" in run(["python", "-m", "pipeline", "source", "--check"], project).stdout

    write_digits(staging, images[200:250], labels[200:250], 200)  # 50 new images arrive in the bucket
    _upload(s3_server, "images", staging, "digits")
    assert ": changed" in run(["python", "-m", "pipeline", "source", "--check"], project).stdout
    assert run(["dvc", "status", "ingest"], project).stdout.strip() == "Data and pipelines are up to date."
    updated = run(["python", "-m", "pipeline", "source"], project).stdout
    assert "dvc update" in updated and "new version" in updated
    assert len(list((project / DIGITS).rglob("*.png"))) == 250
    assert "data/source" in run(["dvc", "status", "ingest"], project).stdout
    run(["dvc", "repro", "ingest"], project)
    report = json.loads(Layout(project).ingest_report.read_text())
    assert report["splits"]["train"]["images"] == 250 and report["source"] == "folder: s3://images/digits"
