"""The parameters of a load test and of an evaluation, each declared once.

:class:`LoadTestOptions` and :class:`EvaluationOptions` are frozen dataclasses: every field has
its type, its default and one line of documentation (``field.metadata["doc"]``). Everything
else is derived from them:

- ``optbench.load_test`` / ``aload_test`` / ``evaluate`` / ``aevaluate`` take ``options=`` and
  the same names as keyword arguments (validated once, here, when the object is built);
- the command line's options (:mod:`optbench.options_cli`);
- a configuration file's ``[load_test]`` / ``[evaluation]`` keys (:func:`check_table`);
- the README's parameter tables (:func:`markdown_table`; ``scripts/readme_tables.py`` rewrites
  them, and a test fails when they differ);
- what a result records: ``result.options`` and its ``to_dict()`` in the Parquet metadata, from
  which :meth:`from_dict` rebuilds the options of the run.

Values are checked here, when the object is built, before any work starts: against the
declared types (a wrong type, a value outside a ``Literal``), against each field's bounds (its
``minimum``, ``maximum``, ``above`` and allowed ``keys``, which ``option`` also writes into the
field's one line of documentation, so the CLI's help and the README say them), and floats must be
finite. A closed loop needs a ``concurrency``. Errors are ``ConfigError`` naming the field (the
configuration file and key, or the command-line flag, where the value came from there). Adding
an option is adding a field (plus its handling where it is used).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from optbench.datasets import CATEGORIES
from optbench.exceptions import ConfigError
from optbench.slo import SLO_METRICS, parse_slo_text, slo_problem

#: Per-request deadline in seconds by default: long enough for 1024 tokens on a slow CPU server.
DEFAULT_TIMEOUT_S = 600.0

#: The GSM8K answer extraction modes (see ``optbench.scoring``).
Gsm8kMode = Literal["marked-or-last", "official", "lmeval-strict", "lmeval-flexible"]
#: Former names of values, still accepted with a deprecation warning.
RENAMED_VALUES: dict[str, dict[str, str]] = {"gsm8k_mode": {"default": "marked-or-last"}}


#: The largest value of the Rust core's unsigned integers the options reach.
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
#: The most requests of a load test (each phase): the core keeps every record in memory.
MAX_REQUESTS = 1_000_000
#: The longest per-request deadline or time limit, in seconds (7 days).
MAX_SECONDS = 604_800.0

Number = Union[int, float]


def option(
    default: Any,
    doc: str,
    *,
    minimum: Number | None = None,
    maximum: Number | None = None,
    above: Number | None = None,
    keys: Sequence[str] | None = None,
    check: Callable[[Any], str | None] | None = None,
    cli: str | None = None,
    parse: Callable[[str], Any] | None = None,
    core: bool = True,
) -> Any:
    """A field of an options class: its default, one line of documentation, and optionally its
    bounds (``minimum`` and ``maximum`` inclusive, ``above`` exclusive; for a table, of each
    value), the allowed ``keys`` of a table (or items of a list), a ``check`` of anything else
    (the value -> None or what is wrong, e.g. ``"['qa'] needs 'target'"``), the CLI's name for its value,
    how the CLI reads it (``parse``: text -> value, raising ``ValueError``; default by type),
    and ``core=False`` for a load-test option that Python consumes instead of passing it to the
    Rust core. The bounds are appended to ``doc``, so every place that shows it says them."""
    metadata: dict[str, Any] = {"doc": doc + _bounds_doc(minimum, maximum, above), "core": core}
    for name, value in (("minimum", minimum), ("maximum", maximum), ("above", above), ("keys", keys), ("check", check)):
        if value is not None:
            metadata[name] = value
    if cli is not None:
        metadata["cli"] = cli
    if parse is not None:
        metadata["parse"] = parse
    return field(default=default, metadata=metadata)


def _bounds_doc(minimum: Number | None, maximum: Number | None, above: Number | None) -> str:
    """The bounds in words, to append to a field's doc: "; from 1 to 100", "; above 0"..."""
    if minimum is not None and maximum is not None:
        return f"; from {_num(minimum)} to {_num(maximum)}"
    parts = [f"above {_num(above)}"] if above is not None else []
    parts += [f"at least {_num(minimum)}"] if minimum is not None else []
    parts += [f"at most {_num(maximum)}"] if maximum is not None else []
    return f"; {', '.join(parts)}" if parts else ""


def _num(value: Number) -> str:
    """A bound as the docs show it: ``2^64-1`` for the largest unsigned integers."""
    if isinstance(value, int) and value >= U32_MAX and (value + 1).bit_count() == 1:
        return f"2^{(value + 1).bit_length() - 1}-1"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


OptionsT = TypeVar("OptionsT", bound="Options")


class Options:
    """What the options classes share: checking, merging, (de)serialising."""

    #: The configuration file's section of these options.
    section: ClassVar[str]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            renamed = RENAMED_VALUES.get(f.name, {})
            if isinstance(value, str) and value in renamed:
                warnings.warn(
                    f"{f.name}={value!r} is deprecated: use {renamed[value]!r} (the same thing)",
                    DeprecationWarning,
                    stacklevel=4,
                )
                value = renamed[value]
            value = _normalise(value)
            object.__setattr__(self, f.name, value)
            problem = field_problem(type(self), f.name, value)
            if problem is not None:
                raise ConfigError(f"{f.name}{problem}")
        self._check_together()

    def _check_together(self) -> None:
        """The rules between fields (each field is already valid on its own)."""

    @classmethod
    def make(cls: type[OptionsT], options: OptionsT | Mapping[str, Any] | None = None, **overrides: Any) -> OptionsT:
        """``options`` (an instance, a mapping of field values, or None for the defaults) with
        ``overrides`` applied; unknown names raise ``ConfigError`` listing the allowed ones."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        base: dict[str, Any] = {}
        if isinstance(options, cls):
            base = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        elif isinstance(options, Mapping):
            base = dict(options)
        elif options is not None:
            raise ConfigError(f"options must be a {cls.__name__} or a dict, got {type(options).__name__}")
        values = {**base, **overrides}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown} (allowed: {', '.join(sorted(names))})")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-ready values (what results record)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[OptionsT], data: Mapping[str, Any]) -> OptionsT:
        """The options recorded by :meth:`to_dict` (other keys, such as ``base_url``, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def core_arguments(self) -> dict[str, Any]:
        """The fields the Rust core takes as they are (``LoadTest``'s keyword arguments)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.metadata["core"]
        }

    def changed(self) -> dict[str, Any]:
        """The fields that differ from their defaults."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) != f.default
        }


@dataclass(frozen=True)
class LoadTestOptions(Options):
    """The parameters of a load test (``optbench.load_test``): a closed loop by default
    (``num_requests`` with ``concurrency`` in flight), an open loop with ``request_rate``."""

    section: ClassVar[str] = "load_test"

    num_requests: int = option(100, "measured requests", minimum=1, maximum=MAX_REQUESTS)
    concurrency: int | None = option(
        8,
        "closed loop: requests in flight; open loop: a cap on them (None: no cap; waiting shows as queue delay)",
        minimum=1,
        maximum=MAX_REQUESTS,
    )
    request_rate: float | None = option(None, "requests per second: turns the run into an open loop", above=0)
    arrival: Literal["constant", "poisson", "gamma"] = option("poisson", "open-loop gaps between requests")
    burstiness: float = option(
        1.0,
        "gamma shape: below 1 burstier than Poisson, above 1 more regular (with poisson, not 1 means gamma)",
        above=0,
    )
    input_tokens: int = option(
        2048, "synthetic prompt length in the server's tokens", minimum=1, maximum=1_048_576, core=False
    )
    shared_prefixes: int | None = option(
        None,
        "a shared-prefix workload: this many different prefixes, each followed by each of `suffixes`"
        " suffixes, instead of input_tokens-long prompts; the summary reports the intended and the"
        " server's prefix-cache hit rate (optbench.prefix_cache; None: every prompt differs)",
        minimum=1,
        maximum=MAX_REQUESTS,
        core=False,
    )
    prefix_tokens: int = option(
        512,
        "shared-prefix workload: each prefix's length in the server's tokens",
        minimum=1,
        maximum=1_048_576,
        core=False,
    )
    suffixes: int = option(
        4, "shared-prefix workload: different suffixes after each prefix", minimum=1, maximum=MAX_REQUESTS, core=False
    )
    suffix_tokens: int = option(
        64, "shared-prefix workload: tokens each suffix adds", minimum=1, maximum=1_048_576, core=False
    )
    prefix_order: Literal["interleaved", "grouped"] = option(
        "interleaved",
        "shared-prefix workload: `interleaved` (suffix 0 of every prefix, then suffix 1...) or `grouped`"
        " (every suffix of prefix 0, then of prefix 1...)",
        core=False,
    )
    hit_rate_margin: float = option(
        0.05,
        "shared-prefix workload: warn when the server's hit rate differs from the intended one by more than this",
        minimum=0,
        maximum=1,
        core=False,
    )
    trace: str | None = option(
        None,
        "replay a trace: a JSONL file of timestamp (ms), input_length, output_length and optionally"
        " prefix_id + prefix_length per request, sent on its times with ignore_eos (optbench.trace);"
        " replaces num_requests, request_rate and the prompts",
        cli="FILE.jsonl",
        core=False,
    )
    trace_speedup: float = option(
        1.0,
        "trace replay: send this many times faster than the trace's times (2: half the span)",
        above=0,
        maximum=1e6,
        core=False,
    )
    output_tokens: int = option(1024, "`max_tokens` of each request", minimum=1, maximum=U32_MAX)
    endpoint: Literal["completions", "chat"] = option(
        "completions", "`completions` (/v1/completions) or `chat` (/v1/chat/completions)"
    )
    prompts: str | list[Any] | None = option(
        None,
        "your own prompts instead of synthetic ones: a JSONL path, or a list of strings or conversations",
        cli="FILE.jsonl",
        core=False,
    )
    sessions: int | None = option(
        None,
        "multi-turn: this many conversations, each turn sent with the history (synthetic: `turns` user turns of"
        " input_tokens each; with `conversations`: the first this many, None: all); concurrency counts sessions;"
        " chat endpoint, closed loop, no warm-up; num_requests is not used (optbench.sessions)",
        minimum=1,
        maximum=MAX_REQUESTS,
        core=False,
    )
    turns: int = option(3, "multi-turn: user turns of each synthetic session", minimum=1, maximum=1000, core=False)
    conversations: str | list[list[str]] | None = option(
        None,
        "multi-turn from your own conversations: a JSONL path (each line a JSON list of user turns) or such a list",
        cli="FILE.jsonl",
        core=False,
    )
    think_time_s: float = option(
        0.0, "multi-turn: pause after a turn's answer before the session's next turn", minimum=0, maximum=MAX_SECONDS
    )
    routing: Literal["round_robin", "least_outstanding"] = option(
        "round_robin",
        "with several base URLs (replicas): `round_robin` (an exact split in send order) or"
        " `least_outstanding` (the one with the fewest requests in flight, ties to the lowest index)",
    )
    seed: int = option(0, "seed of the synthetic prompts and of the open-loop schedule", minimum=0, maximum=U64_MAX)
    warmup: int = option(
        0,
        "requests sent first, kept as rows with warmup=True, excluded from every metric",
        minimum=0,
        maximum=MAX_REQUESTS,
    )
    ignore_eos: bool = option(False, "ask the server to generate exactly output_tokens (llama.cpp, vLLM, SGLang)")
    preconnect: bool = option(
        True,
        "before the clock starts, open as many connections as the load shape holds in flight (concurrent"
        " GET /v1/models, at most 10 s; a failure is a warning); summary['preconnect'] reports it",
    )
    timeout_s: float | None = option(
        DEFAULT_TIMEOUT_S,
        "per-request deadline in seconds (a `deadline` row); None waits forever",
        above=0,
        maximum=MAX_SECONDS,
    )
    time_limit_s: float | None = option(
        None,
        "stop the measured phase after this many seconds; requests in flight become `cancelled` rows",
        above=0,
        maximum=MAX_SECONDS,
    )
    temperature: float = option(0.0, "sampling temperature", minimum=0)
    api_key_env: str | None = option(
        None, "name of an environment variable holding a bearer API key", cli="VAR", core=False
    )
    tokenizer: str | None = option(None, "a tokenizer.json for servers without /tokenize", cli="PATH")
    extra_body: dict[str, Any] | None = option(
        None, "extra JSON fields for every request body (they override the defaults)", cli="JSON"
    )
    slo: dict[str, Any] | None = option(
        None,
        "request-level SLO, metric: bound in ms, of ttft_ms, itl_ms (a request's mean gap), itl_max_ms,"
        " tpot_ms, e2e_ms; a bound is a number (every request) or {pQ: ms} (a percentile); the summary"
        " then reports attainment and goodput (optbench.slo); CLI: ttft_ms=500,itl_ms:p99=50",
        keys=SLO_METRICS,
        check=slo_problem,
        cli="METRIC=MS,...",
        parse=parse_slo_text,
        core=False,
    )

    @property
    def multi_turn(self) -> bool:
        """Whether the run sends multi-turn sessions (``sessions`` or ``conversations``)."""
        return self.sessions is not None or self.conversations is not None

    def _check_together(self) -> None:
        if self.concurrency is None and self.request_rate is None and self.trace is None:
            raise ConfigError(
                "concurrency must be an integer in a closed loop (None needs request_rate or trace: an open loop)"
            )
        if self.trace is not None:
            others = (
                [
                    name
                    for name, value in (
                        ("request_rate", self.request_rate),
                        ("prompts", self.prompts),
                        ("shared_prefixes", self.shared_prefixes),
                    )
                    if value is not None
                ]
                + (["warmup"] if self.warmup else [])
                + (["sessions / conversations"] if self.multi_turn else [])
            )
            if others:
                raise ConfigError(f"trace sets the requests and their times: leave out {', '.join(others)}")
        if self.shared_prefixes is not None and self.prompts is not None:
            raise ConfigError("shared_prefixes builds its own prompts: give it or prompts, not both")
        if self.shared_prefixes is not None and self.shared_prefixes * self.suffixes > MAX_REQUESTS:
            raise ConfigError(
                f"shared_prefixes × suffixes must be at most {MAX_REQUESTS}, got"
                f" {self.shared_prefixes} × {self.suffixes}"
            )
        if not self.multi_turn:
            if self.think_time_s:
                raise ConfigError("think_time_s is the pause between a session's turns: give sessions or conversations")
            return
        what = "sessions" if self.conversations is None else "conversations"
        if self.endpoint != "chat":
            raise ConfigError(f"{what} (multi-turn) need endpoint='chat': each turn carries the conversation so far")
        if self.request_rate is not None:
            raise ConfigError(f"{what} (multi-turn) run in a closed loop of concurrency sessions: drop request_rate")
        if self.warmup:
            raise ConfigError(f"{what} (multi-turn) have no warm-up: set warmup to 0")
        if self.prompts is not None:
            raise ConfigError(f"give {what} or prompts, not both")
        if self.shared_prefixes is not None:
            raise ConfigError(f"give {what} or shared_prefixes, not both")


#: The request fields the evaluation sets itself (its prompts, per-category ``max_tokens`` and
#: ``stop``, greedy decoding), which its ``extra_body`` may not replace.
EVALUATOR_BODY_FIELDS = ("model", "prompt", "messages", "stream", "max_tokens", "stop", "temperature")


@dataclass(frozen=True)
class EvaluationOptions(Options):
    """The parameters of a quality evaluation (``optbench.evaluate``)."""

    section: ClassVar[str] = "evaluation"

    categories: list[str] | None = option(
        None, "a subset of qa, reasoning, chat, code (None: all)", keys=CATEGORIES, cli="LIST"
    )
    limit: int | None = option(None, "at most this many scored items per category (a quick slice)", minimum=1)
    concurrency: int = option(8, "requests in flight while generating", minimum=1, maximum=MAX_REQUESTS)
    endpoint_mode: Literal["completions", "chat"] = option(
        "completions", "endpoint of the qa, reasoning and code prompts (chat items always use chat)"
    )
    templates: dict[str, dict[str, str]] | None = option(
        None,
        "per-category prompt templates replacing the defaults (optbench.evaluate.DEFAULT_TEMPLATES):"
        " qa, reasoning, code; each with `shot` and `target`, optionally `instruction`",
        keys=("qa", "reasoning", "code"),
        check=lambda value: _template_problem(value),
        cli="JSON",
    )
    max_tokens: dict[str, int] | None = option(
        None,
        "per-category max_tokens replacing the defaults (optbench.evaluate.DEFAULT_MAX_TOKENS)",
        minimum=1,
        maximum=U32_MAX,
        keys=CATEGORIES,
        cli="JSON",
    )
    stop: dict[str, list[str]] | None = option(
        None,
        "per-category stop sequences replacing the defaults (optbench.evaluate.DEFAULT_STOP)",
        keys=CATEGORIES,
        cli="JSON",
    )
    gsm8k_mode: Gsm8kMode = option("marked-or-last", "how reasoning answers are extracted (optbench.scoring)")
    no_answer_phrase: str | None = option(
        "unanswerable", "the QA answer that means 'no answer' and scores as the empty answer (None: none)"
    )
    embedding_model: str | None = option(
        None,
        "all-MiniLM-L6-v2 folder or hub id for the chat scorer (None: $OPTBENCH_EMBEDDING_MODEL or the hub)",
        cli="PATH",
    )
    sandbox_workers: int | None = option(None, "code programs run at once (None: one per CPU)", minimum=1, maximum=4096)
    code_timeout_s: float = option(10.0, "per-program timeout of the code sandbox in seconds", above=0, maximum=86_400)
    timeout_s: float | None = option(
        DEFAULT_TIMEOUT_S, "per-request deadline in seconds; None waits forever", above=0, maximum=MAX_SECONDS
    )
    api_key_env: str | None = option(None, "name of an environment variable holding a bearer API key", cli="VAR")
    extra_body: dict[str, Any] | None = option(
        None,
        "extra JSON fields for every request body (e.g. top_p, seed, chat_template_kwargs); not the fields the"
        " evaluator sets: " + ", ".join(EVALUATOR_BODY_FIELDS),
        check=lambda value: _evaluation_body_problem(value),
        cli="JSON",
    )
    under_load_concurrency: int | None = option(
        None,
        "quality under load: also generate the answers at concurrency 1 and compare them with those at this"
        " concurrency (optbench.quality_under_load; None: off)",
        minimum=1,
        maximum=MAX_REQUESTS,
    )


def _evaluation_body_problem(body: Mapping[str, Any] | None) -> str | None:
    owned = sorted(set(body or {}) & set(EVALUATOR_BODY_FIELDS), key=EVALUATOR_BODY_FIELDS.index)
    if owned:
        return (
            f" has {', '.join(repr(k) for k in owned)}, which the evaluator sets itself (the prompts, `max_tokens`"
            " and `stop` options, temperature 0); leave it out of extra_body"
        )
    return None


#: The parts of a prompt template (``optbench.evaluate.DEFAULT_TEMPLATES``); ``instruction`` may be left out.
TEMPLATE_PARTS = ("instruction", "shot", "target")


def _template_problem(templates: Mapping[str, Mapping[str, str]] | None) -> str | None:
    for category, template in (templates or {}).items():
        unknown = sorted(set(template) - set(TEMPLATE_PARTS))
        if unknown:
            return f".{category} has {unknown[0]!r}, which is not one of {', '.join(TEMPLATE_PARTS)}"
        missing = [part for part in ("shot", "target") if part not in template]
        if missing:
            return f".{category} needs {' and '.join(repr(m) for m in missing)} (a template replaces the whole default)"
    return None


# --------------------------------------------------------------------------- types


_HINTS: dict[type, dict[str, Any]] = {}


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved type of each field of ``cls`` (cached)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _normalise(value: Any) -> Any:
    """Paths become strings and tuples lists, so options compare and serialise as JSON."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    return value


def is_union(tp: Any) -> bool:
    """Whether ``tp`` is ``X | Y`` (either spelling)."""
    return typing.get_origin(tp) in (Union, types.UnionType)


def describe(tp: Any) -> str:
    """What a value of type ``tp`` is, in words: "an integer", "a list of strings"..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if is_union(tp):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    if tp in simple:
        return simple[tp]
    if origin in (list, Sequence) or tp is list:
        return f"a list of {_plural(describe(args[0]))}" if args and args[0] is not Any else "a list"
    if origin in (dict, Mapping) or tp is dict:
        return f"a table of {_plural(describe(args[1]))}" if args and args[1] is not Any else "a table (dict)"
    if origin in (Callable, typing.get_origin(Callable[..., Any])):
        return "a function"
    return "a value"


def _plural(what: str) -> str:
    words = what.split(" ")
    if words[0] in ("a", "an"):
        words = words[1:]
        words[0] += "s"
    return " ".join(words) if words != ["true", "or", "false"] else "true or false values"


def type_problem(value: Any, tp: Any) -> str | None:
    """None when ``value`` is of type ``tp``, else what it should be (e.g. "an integer")."""
    return None if _is_instance(value, tp) else describe(tp)


def field_problem(cls: type[Options], name: str, value: Any) -> str | None:
    """None when ``value`` suits the field ``name`` of ``cls`` on its own, else what is wrong,
    to follow the field's name: ``" must be at least 1, got 0"``, ``".qa must be ..."``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]
    problem = type_problem(value, field_hints(cls)[name])
    if problem is not None:
        return f" must be {problem}, got {value!r}"
    meta = f.metadata
    allowed = meta.get("keys")
    if allowed is not None and isinstance(value, (dict, list)):
        for key in value:
            if key not in allowed:
                return f" has {key!r}, which is not one of {', '.join(allowed)}"
    items = value.items() if isinstance(value, dict) else [("", value)]
    for key, v in items:
        where = f".{key}" if key else ""
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"{where} must be a finite number, got {v!r}"
        if meta.get("above") is not None and not v > meta["above"]:
            return f"{where} must be above {_num(meta['above'])}, got {v!r}"
        if meta.get("minimum") is not None and v < meta["minimum"]:
            return f"{where} must be at least {_num(meta['minimum'])}, got {v!r}"
        if meta.get("maximum") is not None and v > meta["maximum"]:
            return f"{where} must be at most {_num(meta['maximum'])}, got {v!r}"
    check = meta.get("check")
    return None if check is None else check(value)


def _is_instance(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if is_union(tp):
        return any(_is_instance(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, Sequence) or tp is list:
        inner = args[0] if args else Any
        return isinstance(value, list) and all(_is_instance(v, inner) for v in value)
    if origin in (dict, Mapping) or tp is dict:
        key_t, value_t = args if args else (Any, Any)
        return isinstance(value, dict) and all(
            _is_instance(k, key_t) and _is_instance(v, value_t) for k, v in value.items()
        )
    if origin in (Callable, typing.get_origin(Callable[..., Any])):
        return callable(value)
    raise TypeError(f"options: no check for type {tp!r}")  # a field of a type this module does not know


def type_name(tp: Any) -> str:
    """The type as a person reads it: ``int | None``, ``'completions' | 'chat'``."""
    if is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " | ".join(f"`{a}`" for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


# --------------------------------------------------------------------------- configuration files


def check_table(cls: type[Options], where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a configuration file's ``[load_test]`` / ``[evaluation]`` table against the
    options' fields, each on its own (the rules between fields apply once the table is merged
    with a profile); errors name the file and the key. Returns the table as a dict."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in table.items():
        full = f"{cls.section}.{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{full}' (allowed: {', '.join(sorted(fields))})")
        if isinstance(value, str) and value in RENAMED_VALUES.get(key, {}):
            value = RENAMED_VALUES[key][value]  # a former name: it warns when the options are built
        problem = field_problem(cls, key, _normalise(value))
        if problem is not None:
            raise ConfigError(f"{where}: key '{full}'{problem}")
    return dict(table)


# --------------------------------------------------------------------------- documentation


def shown_value(value: Any) -> str:
    """A default as the help and the README show it (JSON for a dict or list)."""
    return "None" if value is None else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def markdown_table(cls: type[Options]) -> str:
    """The README's table of ``cls``: option, type, default, meaning."""
    hints = field_hints(cls)
    lines = ["| option | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = "`None`" if f.default is None else f"`{shown_value(f.default)}`"
        type_text = type_name(hints[f.name]).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {type_text} | {default} | {f.metadata['doc'].replace('|', '/')} |")
    return "\n".join(lines)


def update_readme(path: str | os.PathLike[str]) -> bool:
    """Rewrites the options tables of a README in place: each table that follows a line
    ``<!-- generated from optbench.options.<Class>... -->``. Returns whether anything changed."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        marker = lines[i].strip()
        cls = next(
            (
                c
                for c in Options.__subclasses__()  # SearchOptions too (optbench.search)
                if marker.startswith(f"<!-- generated from {c.__module__}.{c.__name__};")
            ),
            None,
        )
        i += 1
        if cls is not None:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            out.extend(markdown_table(cls).split("\n"))
    text = "\n".join(out)
    changed = text != "\n".join(lines)
    if changed:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return changed


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EvaluationOptions",
    "Gsm8kMode",
    "LoadTestOptions",
    "Options",
    "check_table",
    "field_problem",
    "markdown_table",
    "type_problem",
    "update_readme",
]
