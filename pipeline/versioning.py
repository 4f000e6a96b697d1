"""The user's images as a DVC-versioned input: where the pipeline reads them, how they get under DVC's
control, how they are refreshed, and a cheap fingerprint that tells whether they changed.

The `ingest` stage depends on `data/source/` (dvc.yaml), so DVC sees every image it can read:
- data kept in the project, `data.path: data/source/<name>`, is tracked with `dvc add`; afterwards
  `dvc repro` versions every change by itself (a new image reruns ingest and commits the new version);
- data anywhere else, `data.path: /mnt/images`, `s3://bucket/mnist`, `https://...`, is brought in
  with `dvc import-url <data.path> data/source/<name>` (its content in the DVC cache and remote) and
  refreshed with `dvc update`, which the nightly flow runs before it asks DVC what is stale.
`git checkout <commit> && dvc checkout` then restores exactly the images of that commit. The bundled
and keras sources need none of this: they do not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import DataConfig
from pipeline.errors import DataError, SourceUnavailableError
from pipeline.layout import Layout

STATIC_SOURCES = ("bundled", "keras")


def is_url(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class TrackedSource:
    """Where `data.path` lives (`origin`), its copy in the project that ingest reads (`copy`), and how
    DVC tracks that copy (`imported`: `dvc import-url` + `dvc update`; else `dvc add`)."""

    origin: str
    copy: Path
    imported: bool

    @property
    def dvc_file(self) -> Path:
        return self.copy.with_name(self.copy.name + ".dvc")

    def version(self) -> str | None:
        """The md5 DVC recorded for the copy (its .dvc file), or None before it is tracked."""
        if not self.dvc_file.is_file():
            return None
        outs = (yaml.safe_load(self.dvc_file.read_text()) or {}).get("outs") or [{}]
        return outs[0].get("md5")


def tracked_source(config: DataConfig, root: Path) -> TrackedSource | None:
    """The user's data of `config` (None for the bundled and keras sources)."""
    if config.source in STATIC_SOURCES or not config.path:
        return None
    source_dir = Layout(root).source_dir
    if not is_url(config.path):
        local = Path(config.path) if Path(config.path).is_absolute() else root / config.path
        if local.resolve().is_relative_to(source_dir.resolve()):
            return TrackedSource(origin=config.path, copy=local, imported=False)
        origin = str(local.resolve())
    else:
        origin = config.path
    name = origin.rstrip("/").rsplit("/", 1)[-1]
    return TrackedSource(origin=origin, copy=source_dir / name, imported=True)


def readable_copy(config: DataConfig, root: Path) -> Path | None:
    """The path ingest reads for `config`; a DataError with the fix when it is not in the project yet."""
    source = tracked_source(config, root)
    if source is None:
        return None
    if source.imported and not source.copy.exists():
        raise DataError(f"data.path {config.path} is not in the project yet: run `python -m pipeline source` "
                        f"(dvc import-url {source.origin} {source.copy.relative_to(root)}), then dvc repro")
    return source.copy


def _repo(root: Path) -> Any:
    from dvc.repo import Repo

    return Repo(str(root))


def bring_in(config: DataConfig, root: Path) -> dict[str, Any]:
    """Put the data under DVC's control, or refresh it: `dvc add` for data in data/source/, `dvc import-url`
    the first time for data elsewhere and `dvc update` afterwards. Idempotent.

    Returns:
        {"origin", "copy", "dvc_file", "action", "before", "after", "changed"} (versions: DVC md5s).
    """
    source = tracked_source(config, root)
    if source is None:
        return {"origin": config.source, "action": "none (a static source)", "changed": False}
    before = source.version()
    if not source.imported and not source.copy.exists():
        raise DataError(f"data.path {config.path} does not exist; put the images there or point data.path at them")
    action = "dvc add" if not source.imported else "dvc import-url" if before is None else "dvc update"
    copy = str(source.copy.relative_to(root))
    # DVC resolves paths against the working directory: ask from inside the project.
    with contextlib.chdir(root), _repo(root) as repo:
        try:
            if action == "dvc add":
                repo.add([copy])
            elif action == "dvc import-url":
                repo.imp_url(source.origin, out=copy, fs_config=config.fs_config or None)
            else:
                repo.update([str(source.dvc_file.relative_to(root))])
        except Exception as error:  # DVC's own errors: an unreachable URL, credentials, a full disk
            raise SourceUnavailableError(f"data.path {config.path}: {action} failed ({type(error).__name__}: "
                                         f"{error})") from error
    after = source.version()
    return {"origin": source.origin, "copy": str(source.copy.relative_to(root)),
            "dvc_file": str(source.dvc_file.relative_to(root)), "action": action, "before": before,
            "after": after, "changed": before != after}


def fingerprint(config: DataConfig, root: Path) -> str | None:
    """A cheap hash of the origin's listing (names, sizes, modification times or ETags, no content):
    it changes when an image is added, changed or removed. None for the static sources."""
    source = tracked_source(config, root)
    if source is None:
        return None
    digest = hashlib.sha256()
    for name, size, stamp in sorted(_listing(source.origin, root, config.fs_config or {})):
        digest.update(f"{name}\0{size}\0{stamp}\n".encode())
    return digest.hexdigest()[:16]


def check_for_changes(config: DataConfig, root: Path) -> dict[str, Any]:
    """Compare the origin's fingerprint with the one seen at the last check, and remember the new one.

    Returns:
        {"fingerprint", "previous", "changed"}; the first check of a source counts as a change.
    """
    from pipeline.io import read_json, write_json

    state_file = Layout(root).source_state
    current = fingerprint(config, root)
    previous = read_json(state_file).get("fingerprint") if state_file.is_file() else None
    write_json(state_file, {"origin": config.path, "fingerprint": current})
    return {"fingerprint": current, "previous": previous, "changed": current != previous}


def _listing(origin: str, root: Path, fs_config: dict[str, str]) -> list[tuple[str, int, str]]:
    if not is_url(origin):
        path = Path(origin) if Path(origin).is_absolute() else root / origin
        if path.is_file():
            return [(path.name, path.stat().st_size, str(path.stat().st_mtime_ns))]
        if not path.is_dir():
            raise DataError(f"data.path {origin} does not exist")
        listing = []
        for folder, _, files in os.walk(path):
            for file in files:
                stat = (Path(folder) / file).stat()
                listing.append((str((Path(folder) / file).relative_to(path)), stat.st_size, str(stat.st_mtime_ns)))
        return listing
    from dvc.fs import get_cloud_fs

    with _repo(root) as repo:
        cls, fs_settings, fs_path = get_cloud_fs(repo.config, url=origin, **fs_config)
    filesystem = cls(**fs_settings).fs
    try:
        found = filesystem.find(fs_path, detail=True)
    except Exception as error:
        raise SourceUnavailableError(f"data.path {origin}: cannot list it ({type(error).__name__}: {error})") from error
    keys = ("ETag", "etag", "md5", "mtime", "LastModified", "last_modified")
    return [(name, int(info.get("size") or 0), str(next((info[key] for key in keys if info.get(key)), "")))
            for name, info in found.items()]
