"""The one JSONL reader: prompt files, dataset sources; and the UTF-8 reading of whole files.

Reads UTF-8 text (gzipped when the name ends with ``.gz``), one JSON value per line; blank lines
are skipped. Errors are :class:`~optbench.exceptions.DatasetError` naming the file and line
(bytes that are not UTF-8 included: each line is decoded on its own, so the line is exact).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

from optbench.exceptions import DatasetError


def open_text(path: str | os.PathLike[str]) -> TextIO:
    """Opens a UTF-8 text file, decompressing it when its name ends with ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _open_bytes(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def not_utf8(path: str | os.PathLike[str], data: bytes, error: UnicodeDecodeError, first_line: int = 1) -> str:
    """Where ``error`` (decoding ``data``, the file's text from ``first_line`` on) is, in words:
    ``"data.jsonl line 3: not UTF-8 (byte 0xff at column 12)"``."""
    line = first_line + data.count(b"\n", 0, error.start)
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return f"{path} line {line}: not UTF-8 (byte 0x{data[error.start]:02x} at column {column})"


def read_text(path: str | os.PathLike[str], error: type[Exception] = DatasetError) -> str:
    """The whole file as UTF-8 text (gunzipped when its name ends with ``.gz``). A file that
    cannot be read or is not UTF-8 raises ``error`` naming the file (and the line)."""
    path = Path(path)
    try:
        with _open_bytes(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise error(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(not_utf8(path, data, e)) from None


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, Any]]:
    """Every value of the file with its line number (1-based), in order."""
    path = Path(path)
    rows: list[tuple[int, Any]] = []
    lineno = 0
    try:
        with _open_bytes(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DatasetError(not_utf8(path, raw, e, lineno)) from None
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                except RecursionError:
                    raise DatasetError(f"{path} line {lineno}: not valid JSON (nested too deeply)") from None
    except (OSError, EOFError) as e:
        # A missing file, or a corrupt or truncated gzip stream.
        raise DatasetError(f"{path} line {lineno + 1}: cannot read ({type(e).__name__}: {e})") from None
    return rows
