"""Crash-safe writes, and bounded reads of files users name.

Writes: a file or a whole folder appears complete in one rename, or not at all.

Files go to a temp file in the same folder, are fsynced and then renamed over
the target (:func:`atomic_write_bytes`, ``_text``, ``_json``). Folders are
filled in a hidden temp folder beside the target and published by
:func:`atomic_dir`, which refuses to overwrite unless told. Temp names start
with a dot and carry the pid, so debris from a killed process is easy to spot.
This module knows nothing about adapters or models; callers name their own
errors. It imports nothing heavy.

Reads: :func:`open_regular_file` and :func:`read_regular_file` accept only a
regular file (symlinks are followed, and the file they point to must be
regular): a folder, FIFO, device or socket is refused with an
:class:`~agent_sleep.errors.InvalidInputError` naming the path, before a read
could block or run forever (``/dev/zero``, a pipe nobody writes to).
:func:`read_regular_file` also stops at a size cap
(:class:`~agent_sleep.errors.PayloadTooLargeError` naming the cap and the size).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from agent_sleep.errors import InvalidInputError, PathExistsError, PayloadTooLargeError

__all__ = [
    "atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fresh_name", "fsync_dir",
    "fsync_file", "open_regular_file", "read_regular_file",
]  # fmt: skip


def fresh_name(parent: Path, stem: str) -> Path:
    """A path under ``parent`` that no other process will pick: ``<stem><pid>-<12 hex>``."""
    # Not tempfile.mkstemp/mkdtemp: those force mode 0600/0700, and a published file or folder must
    # keep the usual umask permissions so other users of a shared cache can read it.
    return Path(parent) / f"{stem}{os.getpid()}-{uuid.uuid4().hex[:12]}"


def fsync_file(path: str | Path) -> None:
    """Flush a file's bytes to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):  # not every platform/filesystem can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- single files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, so readers never see half a file."""
    path = Path(path)
    tmp = fresh_name(path.parent, f".{path.name}.tmp-")
    try:
        with tmp.open("xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` for text."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> None:  # fmt: skip
    """:func:`atomic_write_bytes` for JSON (indented, keys sorted, one trailing newline)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------- folders


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(dirpath)


def _publish(tmp: Path, dest: Path, *, overwrite: bool) -> None:
    if overwrite and (dest.exists() or dest.is_symlink()):
        old = fresh_name(dest.parent, f".{dest.name}.old-")
        os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(old, dest)  # put the previous version back rather than leave nothing
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        # rename(2) refuses a non-empty destination, so of two concurrent writers one loses here.
        os.rename(tmp, dest)
    except OSError as exc:
        if dest.exists() or dest.is_symlink():
            raise PathExistsError(f"{dest} was created concurrently; not overwritten") from exc
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, mark: str = ".part-", overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder ``.<dest name><mark><pid>-<hex>`` beside ``dest``; publish it as ``dest``.

    When the ``with`` block ends normally, every file in the temp folder and
    the folder itself are fsynced, it is renamed to ``dest`` and the parent is
    fsynced. If the block (or the publish) fails, the temp folder is removed
    and the error propagates. Raises :class:`~agent_sleep.errors.PathExistsError`
    if ``dest`` exists before the block or appears while it runs, unless
    ``overwrite``: then the old ``dest`` is swapped out and deleted after the
    new one is in place.
    """
    dest = Path(dest)
    if not overwrite and (dest.exists() or dest.is_symlink()):
        raise PathExistsError(f"{dest} already exists; not overwritten")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_name(dest.parent, f".{dest.name}{mark}")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _publish(tmp, dest, overwrite=overwrite)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- bounded reads

_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _require_regular(mode: int, path: Path, what: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "something else")
    link = f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""
    raise InvalidInputError(f"{what} {path}{link} is {kind}, not a regular file")


def open_regular_file(path: str | Path, *, what: str = "file") -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; ``what`` names it in errors ("document").

    Symlinks are followed; what they point to must be a regular file. Refused
    with :class:`~agent_sleep.errors.InvalidInputError` naming the path: a
    missing file or dangling symlink, a folder, FIFO, device or socket, and a
    file that cannot be opened (the OS reason is given).
    """
    path = Path(path)
    try:
        _require_regular(os.stat(path).st_mode, path, what)
        # O_NONBLOCK: if a FIFO is swapped in after the stat, open() returns at once instead of waiting for
        # a writer, and the fstat below refuses it. Reads from a regular file ignore the flag.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        dangling = " (a symlink to a missing file)" if path.is_symlink() else ""
        raise InvalidInputError(f"{what} {path} does not exist{dangling}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        _require_regular(os.fstat(fd).st_mode, path, what)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path, max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, never more than ``max_bytes`` read (see :func:`open_regular_file`).

    A file above the cap raises :class:`~agent_sleep.errors.PayloadTooLargeError`
    naming the cap and the size, without reading it; one that grows past the cap
    while read (or reports no size, like ``/proc`` files) stops at ``max_bytes + 1``.
    """
    path = Path(path)
    with open_regular_file(path, what=what) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise PayloadTooLargeError(f"{what} {path} is {size:,} bytes, above the cap of {max_bytes:,} bytes")
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise InvalidInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"{what} {path} has more than {max_bytes:,} bytes, above the cap")
    return data
