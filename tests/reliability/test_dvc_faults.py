"""DVC under faults: two `dvc repro` at once, `dvc repro` and `dvc push` killed, a corrupted cache
file (issue 7, faults 4 and 6). Every command is the real `dvc` CLI in a throwaway repository.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project, run, tiny_params
from tests.reliability.faults import kill_group, running, tree_md5, wait_for

pytestmark = pytest.mark.slow

VARIANT = "three_conv"
STAGE = f"train@{VARIANT}"
UP_TO_DATE = "Data and pipelines are up to date."


def dvc(arguments: list[str], cwd: Path, check: bool = True, timeout: float = 600):
    return run(["dvc", *arguments], cwd, check=check, timeout=timeout, env={"DVC_NO_ANALYTICS": "1"})


def test_concurrent_and_killed_repro(tmp_path: Path) -> None:
    """Fault: a second `dvc repro` started in the same workspace while the first is inside the train
    stage; then `kill -9` of the first `dvc repro` (its whole process group, the stage's Python
    process included) while it trains.
    Expected: the second fails at once with DVC's lock message ("... '<output>' is busy, it is being
    blocked by: (PID <first>): dvc repro ..."), runs no stage, and leaves the first one running;
    dvc.lock stays parseable YAML holding only completed stages; `dvc status` refuses with the same
    message while the first runs.
    After the kill, dvc.lock still holds only the completed stages, `dvc status` drops the dead
    holder's locks ("had been killed. Auto removed it from the lock file.") and names only the killed
    stage; the rerun redoes that stage (resuming from the training backup) and `dvc status` is clean.
    Tolerance: none (exact messages and states).
    """
    params = tiny_params((VARIANT,))
    params["train"].update({"epochs": 40, "early_stopping_patience": 40})  # a train stage of many seconds
    params["data"]["max_images"] = 2000  # epochs of about a second: the kill below lands inside one
    project = make_project(tmp_path / "project", params)
    work = project / ".cache" / "train" / VARIANT
    log = tmp_path / "repro-1.log"
    with running(["dvc", "repro", STAGE], project, log) as first:
        wait_for(lambda: (work / "history.csv").is_file(), 600, "the train stage to start training",
                 interval=0.2, alive=first, log=log)
        started = time.monotonic()
        second = dvc(["repro", STAGE], project, check=False)
        second_seconds = time.monotonic() - started
        assert second.returncode != 0, second.stdout
        message = second.stdout + second.stderr
        print(f"\n[fault 4] second `dvc repro` failed after {second_seconds:.1f}s: {message.strip()[:400]}")
        # DVC releases its repository lock while a stage command runs; the per-output lock (rwlock) of
        # the first repro's stages is what stops the second.
        assert re.search(rf"ERROR: failed to reproduce '\w+': '[^']+' is busy, it is being blocked by:\s+"
                         rf"\(PID {first.pid}\): .*dvc repro {STAGE}", message), message
        assert "Running stage" not in message
        assert first.poll() is None, "the second repro disturbed the first"

        lock = yaml.safe_load((project / "dvc.lock").read_text())
        assert set(lock["stages"]) == {"ingest", "prepare"}
        busy = dvc(["status"], project, check=False)  # refuses too, rather than report a half-written stage
        assert busy.returncode == 1 and f"is being blocked by:\n  (PID {first.pid})" in busy.stderr, busy.stderr

        # Kill half an epoch after the second epoch ended: inside epoch 3, with epoch 2 backed up (a
        # kill while Keras writes its backup is test_training_faults' case: the resume is refused).
        wait_for(lambda: (work / "history.csv").is_file() and _rows(work) >= 1, 600, "the first epoch",
                 alive=first, log=log)
        ended = time.monotonic()
        wait_for(lambda: _rows(work) >= 2, 600, "the second epoch", alive=first, log=log, interval=0.05)
        time.sleep((time.monotonic() - ended) / 2)
        assert "Running stage 'train@three_conv'" in log.read_text()
        epochs_done = _rows(work)
        kill_group(first)
    assert first.returncode == -9
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest", "prepare"}, "a killed stage must not be recorded"
    status = dvc(["status"], project)  # the dead holder's locks are dropped; only the killed stage is due
    assert f"{STAGE}:" in status.stdout and "ingest:" not in status.stdout and "prepare:" not in status.stdout, \
        status.stdout
    assert "had been killed. Auto removed it from the lock file." in status.stderr + status.stdout

    rerun = dvc(["repro", STAGE], project)
    output = rerun.stdout + rerun.stderr
    assert f"Running stage '{STAGE}'" in output and "Running stage 'prepare'" not in output
    assert "resuming from the backup" in output
    assert dvc(["status", STAGE], project).stdout.strip() == UP_TO_DATE
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest", "prepare", STAGE}
    print(f"[fault 4] first repro killed in the train stage after epoch {epochs_done}; rerun redid it, "
          "dvc status clean")


def _rows(work: Path) -> int:
    return len((work / "history.csv").read_text().splitlines()) - 1


def _scratch_repo(path: Path) -> Path:
    path.mkdir()
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "config", "user.email", "tests@example.invalid"], path)
    run(["git", "config", "user.name", "tests"], path)
    dvc(["init", "-q"], path)
    dvc(["config", "core.analytics", "false"], path)
    return path


def _cache_files(repo: Path) -> list[Path]:
    return sorted(path for path in (repo / ".dvc" / "cache" / "files" / "md5").rglob("*")
                  if path.is_file() and not path.name.endswith(".dir"))


def _remote_objects(remote: Path) -> list[Path]:
    """Objects under their final name (<2 hex>/<30 hex>); DVC writes each to a temporary name first."""
    return [path for path in remote.rglob("*") if path.is_file() and re.fullmatch(r"[0-9a-f]{30}(\.dir)?", path.name)]


def test_killed_push_then_push_and_pull_into_a_fresh_clone(tmp_path: Path) -> None:
    """Fault: `kill -9` of `dvc push` to a local-directory remote while it copies 300 MB (400 random
    files of 750 kB), once part of the objects have arrived.
    Expected: every object in the remote under its final name is complete (its md5 is its name:
    DVC writes to a temporary name and renames); the rerun pushes the rest; `dvc pull` into a fresh
    `git clone` gives files with the same md5s as the original, and `dvc status` there is clean.
    Tolerance: none (identical md5s).
    """
    repo = _scratch_repo(tmp_path / "repo")
    data = repo / "data"
    data.mkdir()
    for index in range(400):
        (data / f"part-{index:04d}.bin").write_bytes(os.urandom(750_000))
    dvc(["add", "-q", "data"], repo)
    remote = tmp_path / "remote"
    dvc(["remote", "add", "-d", "shared", str(remote)], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "data"], repo)

    log = tmp_path / "push.log"
    with running(["dvc", "push"], repo, log) as push:
        wait_for(lambda: len(_remote_objects(remote)) >= 40, 300, "part of the push", interval=0.02, alive=push,
                 log=log)
        kill_group(push)
    arrived = _remote_objects(remote)
    leftovers = [path for path in remote.rglob("*") if path.is_file() and path not in arrived]
    print(f"\n[fault 6] push killed with {len(arrived)}/401 objects in the remote, {len(leftovers)} temporary files")
    assert 0 < len(arrived) < 401, "the kill did not land mid-push"
    for path in arrived:
        if not path.name.endswith(".dir"):
            assert hashlib.md5(path.read_bytes()).hexdigest() == path.parent.name + path.name, path

    dvc(["push"], repo)
    assert len(_remote_objects(remote)) == 401
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc(["pull"], clone)
    assert tree_md5(clone / "data") == tree_md5(data)
    assert dvc(["status"], clone).stdout.strip() == UP_TO_DATE


def test_flipped_byte_in_the_cache_is_detected_and_repaired(tmp_path: Path) -> None:
    """Fault: one byte flipped in a file of the DVC cache (.dvc/cache/files/md5/..), in place, as a
    process running as root would (the file keeps its read-only mode).
    Expected (DVC 3.67): `dvc status` does NOT notice by itself: DVC trusts cache files that are
    still read-only (0444) without rehashing them. Made writable (`chmod -R u+w .dvc/cache/files`,
    the documented way to force a check here), the next `dvc status` rehashes, reports the output
    `not in cache` (with `-v`: "corrupted cache file '<path>'") and deletes the bad object; `dvc fetch`
    from the remote repairs it and `dvc status` is clean again. A remote object corrupted the same way
    reaches a clone silently unless the remote has `verify = true`, with which `dvc pull` refuses it.
    Tolerance: none (exact messages).
    """
    repo = _scratch_repo(tmp_path / "repo")
    data = repo / "data"
    data.mkdir()
    for index in range(3):
        (data / f"part-{index}.bin").write_bytes(os.urandom(200_000))
    dvc(["add", "-q", "data"], repo)
    remote = tmp_path / "remote"
    dvc(["remote", "add", "-d", "shared", str(remote)], repo)
    dvc(["push", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "data"], repo)
    victim = _cache_files(repo)[0]
    original = victim.read_bytes()
    assert oct(victim.stat().st_mode & 0o777) == "0o444"
    _flip_byte(victim)

    assert dvc(["status"], repo).stdout.strip() == UP_TO_DATE  # not noticed: the file is still 0444
    for path in (repo / ".dvc" / "cache" / "files").rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    checked = dvc(["status", "-v"], repo)
    assert re.search(r"not in cache:\s+data", checked.stdout), checked.stdout
    assert f"corrupted cache file '{victim}'" in checked.stdout + checked.stderr
    assert not victim.exists()  # DVC deleted the corrupted object
    dvc(["fetch"], repo)
    assert victim.read_bytes() == original
    assert dvc(["status"], repo).stdout.strip() == UP_TO_DATE

    # The same flip in the remote: a clone gets it silently, unless the remote verifies downloads.
    remote_victim = remote / victim.relative_to(repo / ".dvc" / "cache")
    remote_victim.chmod(0o644)
    _flip_byte(remote_victim)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc(["pull"], clone)
    assert tree_md5(clone / "data") != tree_md5(data), "a corrupted remote object passes without verify"
    verified = tmp_path / "verified"
    run(["git", "clone", "-q", str(repo), str(verified)], tmp_path)
    dvc(["remote", "modify", "--local", "shared", "verify", "true"], verified)
    refused = dvc(["pull"], verified, check=False)
    assert refused.returncode != 0 and "Checkout failed for following targets" in refused.stderr, refused.stderr


def _flip_byte(path: Path) -> None:
    with path.open("r+b") as handle:  # in place: same inode, mode untouched
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
