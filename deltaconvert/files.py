"""Atomic output files: a reader never sees a half-written file.

Every file deltaconvert writes (threshold YAML, saved models, run outputs, heatmaps)
goes through :func:`atomic_writer`: the data is written to a temporary file in the
destination's directory, flushed to disk, then renamed over the destination with
``os.replace`` (atomic on POSIX and Windows). On any error the temporary file is
removed and the destination is left as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). The parent directory must exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer mode must be 'wb' or 'w', got {mode!r}")
    destination = Path(path)
    directory = destination.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {destination}: directory {directory} does not exist")
    try:
        handle = tempfile.NamedTemporaryFile(mode, dir=directory, prefix=f".{destination.name}.",
                                             suffix=".tmp", delete=False,
                                             **({"encoding": "utf-8"} if mode == "w" else {}))
    except OSError as error:  # name the destination, not the temporary file
        raise type(error)(f"cannot write {destination}: {error.strerror}") from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_current_umask())  # as a plain open() would
        try:
            os.replace(handle.name, destination)
        except OSError as error:
            raise type(error)(f"cannot write {destination}: {error.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)


def cache_dir(kind: str) -> Path:
    """A per-user cache folder for ``kind`` (created if missing): under
    ``$DELTACONVERT_CACHE`` if set, else ``$XDG_CACHE_HOME/deltaconvert``, else
    ``~/.cache/deltaconvert``. Entries are written atomically, so processes may share it."""
    root = os.environ.get("DELTACONVERT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "deltaconvert")
    folder = Path(root) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder

