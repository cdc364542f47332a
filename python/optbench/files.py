"""Files written whole or not at all: every result file goes to a temporary name in its own
folder and is renamed over the target in one step, so a process killed mid-write leaves the
previous file (or none), never a truncated one that later readers choke on."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path in ``path``'s folder; when the block ends without an exception
    the file there replaces ``path`` in one rename (folders created first). On an exception
    the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name no other writer uses; the writer creates it with the usual permissions.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def utc_stamp() -> str:
    """Now in UTC as ``20261202T031500123456Z``: the names of run ids and set-aside folders."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
