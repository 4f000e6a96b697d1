"""Where a result came from: git commit, DVC data version, file hashes."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path


def git_commit(root: str | Path = ".") -> str:
    """The HEAD commit, with `-dirty` when tracked files changed; 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def dvc_md5(path: str | Path) -> str:
    """The md5 DVC records for a file or directory (`<md5>.dir` for directories), computed by DVC's
    own hashing code without touching the cache, so it equals the value in dvc.lock."""
    import tempfile

    from dvc.fs import LocalFileSystem
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB

    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first")
    if path.is_file():
        return file_md5(path)
    with tempfile.TemporaryDirectory() as scratch:  # build() wants an object store; nothing is kept
        _, _, tree = build(HashFileDB(LocalFileSystem(), scratch), str(path), LocalFileSystem(), "md5",
                           dry_run=True)
    return tree.hash_info.value


def file_md5(path: str | Path) -> str:
    return _file_digest(path, hashlib.md5())


def file_sha256(path: str | Path) -> str:
    return _file_digest(path, hashlib.sha256())


def _file_digest(path: str | Path, digest: hashlib._Hash) -> str:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def keras_content_digest(path: str | Path) -> str:
    """sha256 over a `.keras` file's architecture (config.json) and every stored array (layer
    weights, optimizer state), read with h5py, without TensorFlow.

    Two saves of the same model have the same digest, though their bytes differ (a `.keras` file
    records when it was saved): this tells whether two files hold the same model.
    """
    import io
    import zipfile

    import h5py
    import numpy as np

    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            digest.update(json.dumps(config, sort_keys=True).encode())
            weights_file = io.BytesIO(archive.read("model.weights.h5"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable .keras file ({error})") from None

    def add(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(item[()]).tobytes())

    with h5py.File(weights_file, "r") as weights:
        weights.visititems(add)  # in name order: deterministic
    return digest.hexdigest()
