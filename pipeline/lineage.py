"""Where a result came from: the git commit of the sources, the DVC version of the data, file hashes."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

# What decides a result: the code, the pipeline definition and its parameters, the dependencies.
# Files the pipeline itself writes (dvc.lock, the metrics and reports DVC tracks in git) are not
# sources: a run that rewrites them is still a run of the committed sources.
SOURCE_PATHSPECS = ("pipeline", "flows", "params.yaml", "dvc.yaml", "pyproject.toml", "requirements.lock",
                    "prefect.yaml")
DIRTY_MARK = "-dirty-"


def _git(root: str | Path, *arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True, check=True,
                          timeout=30).stdout


def git_commit(root: str | Path = ".") -> str:
    """The HEAD commit; `<commit>-dirty-<hash>` when the sources differ from it; 'unknown' outside git.

    The hash (12 hex digits) is taken over the diff of the sources against HEAD and the content of
    untracked source files, so two runs from different uncommitted changes are told apart, and two
    runs from the same change share it.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        diff = _git(root, "diff", "HEAD", "--binary", "--", *SOURCE_PATHSPECS)
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--",
                         *SOURCE_PATHSPECS).split("\0")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    untracked = sorted(name for name in untracked if name)
    if not diff and not untracked:
        return commit
    digest = hashlib.sha256(diff.encode())
    for name in untracked:
        digest.update(name.encode() + b"\0")
        path = Path(root) / name
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{commit}{DIRTY_MARK}{digest.hexdigest()[:12]}"


def dvc_md5(path: str | Path) -> str:
    """The md5 DVC records for a file or directory (`<md5>.dir` for directories), computed by DVC's
    own hashing code without touching the cache, so it equals the value in dvc.lock."""
    import tempfile

    from dvc.fs import LocalFileSystem
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB

    from pipeline.errors import MissingInputError

    path = Path(path).resolve()
    if not path.exists():
        raise MissingInputError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
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
