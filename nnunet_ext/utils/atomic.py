"""Atomic writes: a reader never sees a half-written file or folder.

Files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on one file
system). Folders are assembled in a temporary sibling and renamed into place only when complete.

A process killed while writing a folder (``kill -9``, out of memory, a lost session) cannot clean up
after itself. Each :func:`atomic_directory` therefore holds an exclusive ``flock`` on a lock file beside
its temporary folder (``.NAME.XXXXXXXX.lock`` next to ``.NAME.XXXXXXXX.tmp``); the operating system
releases the lock when the process dies, however it dies. The next write of the same target
(:func:`remove_leftovers`) finds the siblings whose lock nobody holds and removes them, and restores the
previous folder if the killed process was in the middle of replacing it. Temporary folders of a process
that is still running are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers are reported instead of removed
    fcntl = None

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; rename it to ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left as it was.

    Args:
        target: final file path. Its parent folder must exist.

    Returns:
        A context manager yielding the temporary path to write to.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_temporary_files(folder: str | os.PathLike, names: str = "*") -> list[Path]:
    """Delete the temporary files :func:`atomic_path` leaves beside a target when its process is killed.

    Only files of its naming, ``.<NAME>.<random>.tmp`` with ``NAME`` matching the glob ``names``, are removed.
    Call it only where no other process writes such a file at the same time (e.g. a trainer's own fold folder).

    Returns:
        The removed files, sorted.
    """
    removed = sorted(p for p in Path(folder).glob(f".{names}.*.tmp") if p.is_file())
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically. NaN is written as ``NaN``."""
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _leftover_pattern(target: Path) -> re.Pattern:
    """``.NAME.<random>.(tmp|lock|old)``: the siblings :func:`atomic_directory` creates for ``target``."""
    return re.compile(rf"^\.{re.escape(target.name)}\.(?P<stem>[A-Za-z0-9_]+)\.(?P<kind>tmp|lock|old)$")


def _owner_is_gone(lock: Path) -> bool:
    """True if no process holds the flock on ``lock`` (its writer ended, or was killed)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:  # e.g. another user's lock: cannot tell, so keep it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the probe's own lock
    return True


def remove_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove what :func:`atomic_directory` writes of ``target`` that were killed left behind.

    A temporary folder whose lock is free is removed; if its writer was killed between moving the old
    ``target`` aside and moving the new one in, the old ``target`` is moved back first. Temporary folders
    of writers that are still running are kept.

    Args:
        target: the final folder of an :func:`atomic_directory` write.

    Returns:
        The paths removed or restored (also logged as warnings).

    Raises:
        FileExistsError: a temporary sibling of ``target`` that cannot be attributed to a finished process
            (no lock file: written by an nnunet-ext version without these locks, or on a system without
            ``flock``); the message names the path to delete.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = _leftover_pattern(target)
    groups: dict[str, dict[str, Path]] = {}
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and (match["kind"] == "lock" or entry.is_dir()):
            groups.setdefault(match["stem"], {})[match["kind"]] = entry
    legacy = target.with_name(f".{target.name}.old")
    unknown = [legacy] if legacy.is_dir() else []
    removed = []
    for stem, paths in sorted(groups.items()):
        lock = paths.get("lock")
        if lock is None or fcntl is None:
            unknown += [p for kind, p in sorted(paths.items()) if kind != "lock"]
            continue
        if not _owner_is_gone(lock):
            continue
        old, tmp = paths.get("old"), paths.get("tmp")
        if old is not None and not target.exists():
            os.replace(old, target)
            logger.warning("restored %s from %s (a write that replaced it was killed)", target, old.name)
            removed.append(old)
        for path in (old, tmp):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)
                logger.warning("removed %s: the leftover of a killed earlier write of %s", path, target.name)
                removed.append(path)
        lock.unlink(missing_ok=True)
    if unknown:
        listed = " ".join(f"'{p}'" for p in unknown)
        raise FileExistsError(
            f"{len(unknown)} temporary folder(s) of an interrupted earlier write of {target} "
            f"cannot be attributed to a finished process (they carry no lock file): {listed}. If no other "
            f"process is writing {target} now, delete them: rm -rf {listed}"
        )
    return removed


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; move it to ``target`` when the block succeeds.

    Leftovers of earlier writes of ``target`` that were killed are removed first (:func:`remove_leftovers`).

    Args:
        target: final folder path.
        overwrite: replace an existing ``target``. When False and ``target`` exists, raise.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False, or :func:`remove_leftovers` refuses.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists. Remove it or pass overwrite=True (--overwrite).")
    fd, lock_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".lock", dir=target.parent)
    lock = Path(lock_name)
    stem = lock_name[: -len(".lock")]
    tmp, old = Path(f"{stem}.tmp"), Path(f"{stem}.old")
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until the end; the OS releases it if this process dies
        tmp.mkdir(mode=0o700)
        yield tmp
        if target.exists():
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if old.exists() and not target.exists():
            os.replace(old, target)
        for path in (tmp, old):
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)
