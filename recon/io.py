"""Writing outputs safely: atomic files, JSON without non-finite numbers, one writer per folder.

A reader never sees a half-written output (``atomic_path``); an interrupted write leaves only a
temporary file, which the next writer of the folder removes (``remove_temp_files``); two
processes never write into one folder at once (``folder_lock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from recon.errors import InputError

TEMP_NAME = re.compile(r"^\.[^.].*\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
"""Names ``atomic_path`` gives its temporary files: ``.<stem>.<8 random characters><suffix>``."""
LOCK_NAME = ".recon.lock"
"""The lock file ``folder_lock`` keeps in a folder (holds the writer's pid and host)."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    The temporary file keeps the target's suffix, so writers that choose the
    format from the extension (trimesh, imageio) work unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temp_files(folders: Iterable[str | Path]) -> list[Path]:
    """Delete the temporary files that interrupted ``atomic_path`` writes left in ``folders`` (not
    their sub-folders); return them. Call it only while holding the folders' ``folder_lock``."""
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if TEMP_NAME.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by None: JSON has no such numbers,
    and ``JSON.parse`` refuses Python's ``NaN`` / ``Infinity``."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def json_text(data: Any, indent: int | None = None) -> str:
    """Standard JSON for ``data``: non-finite floats are written as ``null`` (``finite_json``)."""
    return json.dumps(finite_json(data), indent=indent, allow_nan=False)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (non-finite floats as ``null``)."""
    write_text_atomic(path, json_text(data, indent=2) + "\n")


# ---------------------------------------------------------------------- checks before writing


def check_output_dir(path: str | Path) -> None:
    """Raise ``InputError`` unless ``path`` is, or can be created as, a folder this process may write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "is an existing file, not a folder")
    _check_writable(path if path.is_dir() else path.parent, path)


def check_output_file(path: str | Path) -> None:
    """Raise ``InputError`` unless a file can be written at ``path`` (its folder exists or can be made)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not a file")
    _check_writable(path.parent, path)


def _check_writable(folder: Path, target: Path) -> None:
    """``folder`` (or the nearest part of it that exists) must be a folder this process may write in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(target, f"cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(target, f"cannot be written: no write permission in {existing}")


# ---------------------------------------------------------------------- one writer per folder

_HELD: dict[Path, int] = {}
"""Folders this process holds the lock of, with the nesting depth (the lock is re-entrant)."""


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) while the block runs.

    The lock is ``fcntl.flock`` on ``folder/.recon.lock``: the operating system releases it when
    the holder exits or dies, so a lock left by a killed process never blocks. A folder locked by
    another process raises ``InputError`` naming the folder and the holder's pid and host. Within
    one process the lock is re-entrant (a comparison locks a run that ``fit`` locks again).
    """
    folder = Path(folder).resolve()
    if folder in _HELD:
        _HELD[folder] += 1
        try:
            yield folder
        finally:
            _HELD[folder] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(folder, f"cannot create the folder ({err.strerror})") from None
    lock_path = folder / LOCK_NAME
    handle = _acquire(lock_path)
    _HELD[folder] = 1
    try:
        yield folder
    finally:
        del _HELD[folder]
        lock_path.unlink(missing_ok=True)  # before the unlock: a waiting opener then sees another file
        handle.close()  # releases the flock


def _acquire(lock_path: Path) -> IO[str]:
    """Open and flock ``lock_path`` without waiting, record this process in it; return the handle.

    A holder deletes the file before it unlocks, so a lock taken on a file that is no longer at
    ``lock_path`` is stale and is taken again on the file that is."""
    while True:
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as err:
            raise InputError(lock_path.parent, f"cannot write in the folder ({err.strerror})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.close()
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            raise InputError(lock_path.parent, f"another recon process ({_read_holder(lock_path)}) is writing to "
                             "this folder; wait for it to finish, or stop it, or use another folder") from None
        if _same_file(handle, lock_path):
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _read_holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "pid unknown"
