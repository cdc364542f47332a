"""Questions asked of a running server before a run, which never fail the run.

:func:`check_model` compares the model a run names with the models the server lists at
``/v1/models``. Some servers answer under any model name (llama.cpp's ``llama-server`` serves
the one model it loaded whatever a request names), so a wrong name would otherwise produce
results filed under the wrong label without any error.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

#: How many of the listed models a warning names.
SHOWN_MODELS = 10


def listed_models(body: Any) -> list[str]:
    """The model names in a ``/v1/models`` answer: the ``id`` (and ``aliases``) of each entry
    of ``data`` (OpenAI's shape, or plain strings), and the ``name``/``model`` of each entry of
    ``models`` (the extra list llama.cpp adds), in order, without repeats."""
    names: list[str] = []
    entries: list[Any] = []
    if isinstance(body, dict):
        for key in ("data", "models"):
            if isinstance(body.get(key), list):
                entries += body[key]
    elif isinstance(body, list):
        entries = body
    for entry in entries:
        found: list[Any] = [entry]
        if isinstance(entry, dict):
            aliases = entry.get("aliases")
            found = [entry.get(k) for k in ("id", "name", "model")] + (aliases if isinstance(aliases, list) else [])
        names += [n for n in found if isinstance(n, str) and n and n not in names]
    return names


def check_model(base_url: str, model: str, api_key: str | None = None, timeout_s: float = 3.0) -> str | None:
    """A warning when the server at ``base_url`` (its root, or the root plus ``/v1``) does not
    list ``model`` at ``/v1/models``; None when it does, or when the listing cannot be read
    (no such endpoint, an error, no answer within ``timeout_s``, an answer without names):
    this check never fails a run."""
    root = base_url.strip().rstrip("/").removesuffix("/v1")
    req = urllib.request.Request(f"{root}/v1/models", headers={"Accept": "application/json"})
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = json.loads(resp.read(4 << 20))
    except Exception:  # no listing, an HTTP error, a timeout, not JSON: nothing to compare with
        return None
    names = listed_models(body)
    if not names or model in names:
        return None
    shown = ", ".join(repr(n) for n in names[:SHOWN_MODELS])
    more = f" and {len(names) - SHOWN_MODELS} more" if len(names) > SHOWN_MODELS else ""
    return (
        f"the server at {root} does not list model {model!r} at /v1/models (it lists {shown}{more}); "
        "servers such as llama.cpp answer under any model name, so these results may be labelled "
        "with a model that did not produce them"
    )


__all__ = ["check_model", "listed_models"]
