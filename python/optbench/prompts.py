"""Load-test prompts: synthetic ones of a target token length, or the user's own.

User prompts may be a list of strings, a list of chat conversations (each a list of
``{"role", "content"}`` dicts), or a path to a JSONL file whose lines are a JSON string, an
object with ``"prompt"`` (text) or an object with ``"messages"`` (a conversation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from optbench import _core
from optbench.exceptions import ConfigError, DatasetError
from optbench.jsonl import read_jsonl

if TYPE_CHECKING:
    from optbench.prefix_cache import PrefixWorkload
    from optbench.trace import TraceWorkload

PromptsInput = Union[str, "os.PathLike[str]", Sequence[Any]]


@dataclass
class PromptSet:
    """Prompts ready for the Rust client: either texts or conversations, never both."""

    texts: list[str] | None = None
    #: Chat conversations, each a list of ``{"role", "content"}`` dicts.
    messages: list[list[dict[str, Any]]] | None = None
    #: ``server`` (the server's /tokenize), ``tokenizer`` (a tokenizer.json), ``estimate``
    #: (characters per token) or ``user`` (prompts given by the caller).
    source: str = "user"
    warnings: list[str] = field(default_factory=list)
    #: Multi-turn sessions instead: each a list of user turns (``optbench.sessions``).
    sessions: list[list[str]] | None = None
    #: The shared-prefix workload these prompts are (``optbench.prefix_cache``), if they are one.
    prefix_workload: PrefixWorkload | None = None
    #: The replayed trace these requests are (``optbench.trace``; then ``texts`` is None).
    trace: TraceWorkload | None = None

    def __len__(self) -> int:
        if self.trace is not None:
            return len(self.trace.requests)
        return len(self.texts if self.texts is not None else self.messages or [])


def _one(item: Any, where: str) -> tuple[str, Any]:
    """Classifies one user prompt as ("text", str) or ("messages", list)."""
    if isinstance(item, str):
        return "text", item
    if isinstance(item, dict):
        if isinstance(item.get("prompt"), str):
            return "text", item["prompt"]
        if isinstance(item.get("messages"), list):
            item = item["messages"]
        else:
            raise DatasetError(
                f"{where}: expected a string, {{'prompt': str}} or {{'messages': [...]}}, got keys {sorted(item)}"
            )
    if isinstance(item, list):
        for m in item:
            if not (isinstance(m, dict) and "role" in m and "content" in m):
                raise DatasetError(f"{where}: every message needs 'role' and 'content', got {m!r:.80}")
        return "messages", item
    raise DatasetError(f"{where}: expected a string, a dict or a list of messages, got {type(item).__name__}")


def _from_items(items: list[tuple[str, Any]], origin: str) -> PromptSet:
    if not items:
        raise DatasetError(f"{origin}: no prompts found")
    kinds = {k for k, _ in items}
    if kinds == {"text"}:
        return PromptSet(texts=[v for _, v in items])
    if kinds == {"messages"}:
        return PromptSet(messages=[v for _, v in items])
    raise DatasetError(f"{origin}: mixes plain prompts and chat conversations; use one kind per run")


def load_user_prompts(prompts: PromptsInput) -> PromptSet:
    """Reads the caller's prompts (a list, or a JSONL path) with errors naming the file and line."""
    if isinstance(prompts, (str, os.PathLike)) and not (isinstance(prompts, str) and "\n" in prompts):
        path = Path(prompts)
        if not path.is_file():
            raise DatasetError(f"{path}: prompts file not found (give a JSONL file or a list of prompts)")
        items = [_one(value, f"{path} line {lineno}") for lineno, value in read_jsonl(path)]
        return _from_items(items, str(path))
    if isinstance(prompts, Sequence):
        return _from_items([_one(p, f"prompts[{i}]") for i, p in enumerate(prompts)], "prompts")
    raise ConfigError(f"prompts must be a list or a JSONL file path, got {type(prompts).__name__}")


def synthetic_prompts(
    base_url: str,
    model: str,
    num_prompts: int,
    input_tokens: int,
    *,
    seed: int = 0,
    tokenizer: str | None = None,
    api_key: str | None = None,
    timeout_s: float | None = None,
) -> PromptSet:
    """``num_prompts`` different prompts of ``input_tokens`` tokens as the server counts them.

    The length is measured with the server's ``/tokenize`` endpoint when it has one, else with
    ``tokenizer`` (a ``tokenizer.json``), else estimated at 4 characters per token with a warning.
    ``timeout_s`` (the load test's per-request deadline) bounds each ``/tokenize`` call, never
    more than 10 s: a server that does not answer in time is treated as one without the endpoint.
    A bad ``base_url`` or ``api_key`` raises :class:`~optbench.exceptions.ConfigError`.
    """
    if num_prompts < 1:
        raise ConfigError("num_prompts must be at least 1")
    texts, source, warning = _core.make_prompts(
        base_url, model, num_prompts, input_tokens, seed=seed, tokenizer=tokenizer, api_key=api_key, timeout_s=timeout_s
    )
    return PromptSet(texts=texts, source=source, warnings=[warning] if warning else [])
