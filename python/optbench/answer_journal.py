"""Quality-under-load answers are never lost: :class:`AnswerJournal` keeps each generated
answer on disk the moment it finishes, so an interrupted run (Ctrl-C, SIGTERM, SIGKILL, a
lost machine) resumes from the answers it already paid for.

A journal is a folder::

    settings.json                what the answers belong to, and the segments below
    c<concurrency>.<k>.journal.jsonl   one segment: the answers of one attempt at one pass,
                                 written by the Rust core's journal (the load test's format)

Each attempt at a pass (the answers at concurrency 1, or at N) sends only the requests without
a successful answer yet, as a segment of its own; ``settings.json`` records which items each
segment sent, so its request ids map back to the dataset's items. A failed or cancelled answer
is not kept: it is asked again. ``settings.json`` also holds the settings the answers depend on
(the server, the model, the prompts and their generation settings, N): a journal left with
other settings is set aside (renamed ``<folder>.set-aside-<time>``, with a message), never
mixed in. The journal is removed once both passes are complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from optbench.files import atomic_write_text, utc_stamp
from optbench.results import load_journal

SETTINGS = "settings.json"
#: The record columns an evaluation scores (``optbench.evaluate.score_records``).
COLUMNS = ["request_id", "output_text", "e2e_ms", "ttft_ms", "output_tokens", "finish_reason", "error_kind", "success"]


def requests_digest(requests: list[dict[str, Any]]) -> str:
    """A SHA-256 of the requests (prompts, endpoints, max_tokens, stops), in order."""
    return hashlib.sha256(json.dumps(requests, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerJournal:
    """The journal folder of one quality-under-load comparison (see the module's doc).

    ``settings``: what the answers depend on (JSON values); a folder holding other settings is
    set aside when the journal is opened."""

    def __init__(self, folder: str | os.PathLike[str], settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.segments: list[dict[str, Any]] = []
        self.set_aside: Path | None = None
        path = self.folder / SETTINGS
        if self.folder.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = None
            if isinstance(saved, dict) and saved.get("settings") == self.settings:
                self.segments = list(saved.get("segments", []))
            else:
                stamp = utc_stamp()
                self.set_aside = self.folder.with_name(f"{self.folder.name}.set-aside-{stamp}")
                self.folder.rename(self.set_aside)
                print(
                    f"optbench: the quality-under-load journal {self.folder} holds answers to other settings "
                    f"(server, model, prompts or concurrency): set aside as {self.set_aside}, not mixed in",
                    file=sys.stderr,
                )
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save()

    def _save(self) -> None:
        text = json.dumps({"settings": self.settings, "segments": self.segments}, indent=1)
        atomic_write_text(self.folder / SETTINGS, text + "\n")

    def finished(self, concurrency: int) -> pd.DataFrame:
        """The successful answers journaled at ``concurrency`` (the :data:`COLUMNS`, with
        ``request_id`` the item's index), one per item."""
        frames = []
        for seg in self.segments:
            path = self.folder / seg["file"]
            if seg["concurrency"] != concurrency or not path.exists():
                continue
            rows = load_journal(path)[0].to_pandas()
            if not len(rows):
                continue
            rows = rows[rows["success"].fillna(False).astype(bool)][COLUMNS].copy()
            rows["request_id"] = [seg["items"][int(i)] for i in rows["request_id"]]
            frames.append(rows)
        if not frames:
            return pd.DataFrame(columns=COLUMNS)
        return pd.concat(frames, ignore_index=True).drop_duplicates("request_id", keep="last")

    def segment(self, concurrency: int, items: list[int]) -> Path:
        """A new segment for an attempt at ``concurrency`` sending ``items`` (indices), recorded
        in ``settings.json`` before any request is sent; returns its path."""
        name = f"c{concurrency}.{len(self.segments)}.journal.jsonl"
        self.segments.append({"concurrency": concurrency, "file": name, "items": list(items)})
        self._save()
        return self.folder / name

    def remove(self) -> None:
        """Deletes the journal (its answers are in the result now)."""
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["AnswerJournal", "requests_digest"]
