"""Sentence embeddings for the chat scorer: all-MiniLM-L6-v2, exactly as sentence-transformers
computes it, without torch.

The model's BERT uncased WordPiece tokenizer (Rust ``tokenizers``) truncates at 256 tokens and
pads each batch to its longest text; ONNX Runtime (through the Rust ``ort`` crate) runs the
encoder; the token embeddings are mean-pooled over the attention mask and L2-normalised::

    from optbench.embeddings import Embedder, cosine_similarity
    embedder = Embedder()                      # sentence-transformers/all-MiniLM-L6-v2
    e = embedder.encode(["a cat", "a dog"])    # float32 [2, 384], rows of unit length
    cosine_similarity(e[0], e[1])
    embedder.similarity(answers, references)   # row by row: one score per pair

ONNX Runtime is the shared library inside the PyPI ``onnxruntime`` wheel
(``pip install "onnxruntime>=1.31,<2"``); it is found without importing the Python package.
The model is a local folder (``tokenizer.json`` and ``model.onnx`` or ``onnx/model.onnx``) or a
Hugging Face hub id, downloaded once into the hub's cache (needs ``huggingface_hub``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from optbench import _core
from optbench.exceptions import ConfigError

#: The chat scorer's model (a hub id; a local folder works too).
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Texts per ONNX Runtime call, as in sentence-transformers' ``encode``.
DEFAULT_BATCH_SIZE = 32
#: all-MiniLM-L6-v2's ``max_seq_length`` (tokenizer.json's own 128 is not what it was trained
#: and evaluated with).
DEFAULT_MAX_LENGTH = 256
#: The files a hub download fetches: the ONNX encoder, the tokenizer and the model's
#: configuration, not the PyTorch / TensorFlow / other ONNX weights in the same repository.
HUB_FILES = (
    "onnx/model.onnx",
    "tokenizer.json",
    "config.json",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
)

_INSTALL_ORT = 'pip install "onnxruntime>=1.31,<2"'
# "owner/name" as the hub spells repository ids.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def find_onnxruntime_library() -> Path:
    """The ONNX Runtime shared library to load: ``$ORT_DYLIB_PATH`` when set (the ``ort``
    crate's convention), else ``onnxruntime/capi/libonnxruntime.so.<version>`` inside the
    installed ``onnxruntime`` wheel, located without importing it. Raises ``ConfigError``
    saying what to install when there is none."""
    env = os.environ.get("ORT_DYLIB_PATH")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"ORT_DYLIB_PATH={env} is not a file; unset it or point it at libonnxruntime.so.<version>"
            )
        return path
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"ONNX Runtime is not installed: the chat scorer's embeddings need it; {_INSTALL_ORT}")
    candidates: list[Path] = []
    for location in spec.submodule_search_locations:
        capi = Path(location) / "capi"
        candidates += [*capi.glob("libonnxruntime.so.*"), *capi.glob("libonnxruntime.*.dylib")]
    if not candidates:
        raise ConfigError(
            f"the onnxruntime package in {list(spec.submodule_search_locations)} has no "
            f"capi/libonnxruntime.so.<version>; reinstall it: {_INSTALL_ORT}"
        )
    return max(candidates, key=_version_key)


def _version_key(path: Path) -> tuple[int, ...]:
    """(1, 32, 0) for libonnxruntime.so.1.32.0: the newest library wins if there are several."""
    return tuple(int(p) for p in re.findall(r"\d+", path.name))


def resolve_model(
    model: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None, revision: str | None = None
) -> Path:
    """The local folder of ``model``: the folder itself when it exists, else (for an
    ``owner/name`` hub id) the hub snapshot in the Hugging Face cache, downloaded the first
    time (:data:`HUB_FILES` only)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = os.fspath(model)
    if not _HUB_ID.fullmatch(text) or text.startswith((".", "/", "~")):
        raise ConfigError(
            f"the embedding model folder {text} does not exist; give a folder holding tokenizer.json and "
            f"model.onnx (or onnx/model.onnx), or a Hugging Face hub id such as {DEFAULT_MODEL}"
        )
    try:
        folder = _snapshot_download(text, revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_FILES))
    except ConfigError:
        raise
    except Exception as e:  # the hub raises many kinds (offline, 404, auth): all mean "not here"
        raise ConfigError(
            f"cannot download the embedding model {text} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "give a local folder holding tokenizer.json and model.onnx instead"
        ) from e
    return Path(folder)


def _snapshot_download(
    repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike[str] | None, allow_patterns: list[str]
) -> str:
    """``huggingface_hub.snapshot_download`` (imported only here: it is optional)."""
    try:
        from huggingface_hub import snapshot_download  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(
            f"downloading {repo_id} from the Hugging Face hub needs huggingface_hub "
            "(pip install huggingface_hub); or give a local model folder"
        ) from None
    return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns)


class Embedder:
    """A sentence embedding model run by ONNX Runtime on the CPU (all-MiniLM-L6-v2 by
    default): ``encode`` gives the vectors sentence-transformers gives, to float rounding.

    ``model``: a local folder (``tokenizer.json`` and ``model.onnx`` or ``onnx/model.onnx``) or
    a hub id (downloaded once into the Hugging Face cache, or ``cache_dir``, at ``revision``).
    ``batch_size``: texts per ONNX Runtime call. ``threads``: ONNX Runtime's intra-op threads
    (None: every core). ``max_length``: truncation in tokens, [CLS] and [SEP] included.
    ``onnxruntime_library``: the shared library to load (default:
    :func:`find_onnxruntime_library`). Raises ``ConfigError`` for a missing model or ONNX
    Runtime. Safe to share between threads (ONNX Runtime runs one batch at a time); ``encode``
    releases the GIL.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        cache_dir: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        onnxruntime_library: str | os.PathLike[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1 (or None for every core), got {threads}")
        library = Path(onnxruntime_library) if onnxruntime_library is not None else find_onnxruntime_library()
        folder = resolve_model(model, cache_dir=cache_dir, revision=revision)
        self.model = os.fspath(model)
        self.batch_size = batch_size
        self._inner = _core.Embedder(os.fspath(folder), os.fspath(library), threads=threads, max_length=max_length)

    @property
    def dim(self) -> int:
        """The embedding size (384 for all-MiniLM-L6-v2)."""
        return int(self._inner.dim)

    @property
    def max_length(self) -> int:
        """The truncation length in tokens, special tokens included."""
        return int(self._inner.max_length)

    @property
    def model_path(self) -> Path:
        """The ONNX file in use."""
        return Path(self._inner.model_path)

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Embeddings of ``texts``: float32 ``[len(texts), dim]`` in the order given, each row
        of unit length. Texts of similar length are batched together (``batch_size``, default
        the embedder's), so the result does not depend on the order or the batch size."""
        size = self.batch_size if batch_size is None else batch_size
        return self._inner.encode(_text_list(texts), batch_size=size)

    async def aencode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """:meth:`encode` on a worker thread, so the event loop stays free while it computes."""
        return await asyncio.to_thread(self.encode, texts, batch_size=batch_size)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids the model sees for each text: ``[CLS] ... [SEP]``, truncated to
        ``max_length``, without padding."""
        return self._inner.tokenize(_text_list(texts))

    def similarity(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``texts_a[i]`` and ``texts_b[i]`` for each i (float64 ``[n]``):
        the chat score of answers against references."""
        a, b = _text_list(texts_a), _text_list(texts_b)
        if len(a) != len(b):
            raise ConfigError(f"{len(a)} texts against {len(b)}: give one reference per answer")
        both = self.encode(a + b)  # one call, so the two sides share batches
        return cosine_similarity(both[: len(a)], both[len(a) :])

    def __repr__(self) -> str:
        return (
            f"Embedder(model={self.model!r}, dim={self.dim}, max_length={self.max_length}, "
            f"batch_size={self.batch_size})"
        )


def _text_list(texts: Sequence[str]) -> list[str]:
    # A lone str is a sequence of characters: refuse it rather than embed each letter.
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string; wrap it in a list")
    return list(texts)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis, row by row (numpy broadcasting applies): two
    ``[n, d]`` arrays give ``[n]``, two vectors a 0-d value. Computed in float64; 0 where a
    vector is all zeros."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1:] != b.shape[-1:]:
        raise ValueError(f"cosine_similarity: vectors of different sizes {a.shape} and {b.shape}")
    dot = np.sum(a * b, axis=-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_LENGTH",
    "HUB_FILES",
    "Embedder",
    "cosine_similarity",
    "find_onnxruntime_library",
    "resolve_model",
]
