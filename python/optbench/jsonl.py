"""The one JSONL reader: prompt files, dataset sources.

Reads UTF-8 text (gzipped when the name ends with ``.gz``), one JSON value per line; blank lines
are skipped. Errors are :class:`~optbench.exceptions.DatasetError` naming the file and line.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, TextIO

from optbench.exceptions import DatasetError


def open_text(path: str | os.PathLike[str]) -> TextIO:
    """Opens a UTF-8 text file, decompressing it when its name ends with ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, Any]]:
    """Every value of the file with its line number (1-based), in order."""
    rows: list[tuple[int, Any]] = []
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        # A missing file, a corrupt or truncated gzip stream, or bytes that are not UTF-8.
        raise DatasetError(f"{path} line {lineno + 1}: cannot read ({type(e).__name__}: {e})") from None
    return rows
