#!/usr/bin/env python3
"""Writes the Hugging Face model folder that vLLM and SGLang serve with ``--load-format dummy``:
Llama-3.1-8B-Instruct's ``config.json`` (no weights: the engines fill every tensor with random
values) and the SAME tokenizer as the llama.cpp GGUF of ``gen_gguf.py``, as ``tokenizer.json`` +
``tokenizer_config.json``, so every engine sees the same prompts token for token.

The tokenizer is SmolLM2-135M's byte-level BPE (49,152 tokens, its 48,900 merges, its special
tokens and chat template), read from its GGUF, padded to Llama 3.1's 128,256 entries with the
NORMAL tokens ``<|optbench_pad_N|>`` exactly as ``gen_gguf.py`` pads the GGUF:

- the padding tokens are plain vocabulary entries (no merge produces them, they are not "added
  tokens"), so a prompt tokenizes exactly as with SmolLM2, and a random model that samples one
  (62% of the vocabulary) streams visible text;
- the tokenizer covers the model's ``vocab_size`` (128,256): with a smaller tokenizer the engines
  detokenize the sampled ids above it to nothing and every response is empty (issue 12).

SmolLM2's pre-tokenizer (llama.cpp's ``smollm``: every digit on its own, then GPT-2's byte-level
split) is Digits(individual_digits) + ByteLevel(use_regex) in ``tokenizers``; no BOS is added
(the GGUF says ``add_bos_token = false``).

    hf_model.py --out DIR [--vocab-from smollm2-vocab.gguf] [--vocab 128256]
    hf_model.py --out DIR --tiny      # gen_gguf.py --tiny's shapes, for CPU tests
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_gguf import LLAMA31_8B, TINY, find_smollm2, read_vocab  # noqa: E402

GGUF_CONTROL = 3


def llama31_8b_config(s: dict, bos: int | None, eos: int | None) -> dict:
    """Llama-3.1-8B-Instruct's config.json (meta-llama's published one), shapes from ``s``; the
    BOS/EOS ids are the tokenizer's (SmolLM2's), the dtype bf16."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "head_dim": s["hidden"] // s["heads"],
        "hidden_act": "silu",
        "hidden_size": s["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": s["ffn"],
        "max_position_embeddings": s["ctx"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": s["heads"],
        "num_hidden_layers": s["layers"],
        "num_key_value_heads": s["kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": s["rms_eps"],
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": s["rope_theta"],
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        # as in meta-llama's file; a config without it makes transformers 5 warn about Mistral's regex
        "transformers_version": "4.43.0.dev0",
        "use_cache": True,
        "vocab_size": s["vocab"],
    }


def tokenizer_files(voc: dict, vocab_size: int) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) for the GGUF tokenizer ``voc`` padded to ``vocab_size``."""
    tokens = list(voc["tokens"])
    if vocab_size < len(tokens):
        raise SystemExit(f"hf_model: vocab {vocab_size} is smaller than the tokenizer's {len(tokens)} tokens")
    tokens += [f"<|optbench_pad_{i}|>" for i in range(len(tokens), vocab_size)]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("hf_model: duplicate token strings")
    special = [i for i, ty in enumerate(voc["token_type"]) if ty == GGUF_CONTROL]
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in special
    ]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": list(voc["merges"]),
        },
    }

    def name(key: str) -> str | None:
        i = voc.get(key)
        return tokens[int(i)] if i is not None else None

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": bool(voc.get("add_bos")),
        "add_eos_token": False,
        "bos_token": name("bos"),
        "eos_token": name("eos"),
        "unk_token": name("unk"),
        "pad_token": name("pad"),
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
        "additional_special_tokens": [],
    }
    if voc.get("chat_template"):
        cfg["chat_template"] = voc["chat_template"]
    return tok, cfg


def write_model_folder(out: Path, vocab_from: Path, s: dict) -> Path:
    voc = read_vocab(vocab_from)
    tok, tok_cfg = tokenizer_files(voc, s["vocab"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(llama31_8b_config(s, voc["bos"], voc["eos"]), indent=2) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, separators=(",", ":")) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": voc["bos"], "eos_token_id": voc["eos"]}, indent=2) + "\n"
    )
    (out / "README.md").write_text(
        "Written by optbench's benches/gpu/hf_model.py: Llama-3.1-8B-Instruct's config.json (shapes "
        f"{s}) WITHOUT weights, for `--load-format dummy` (random weights; speed only, never quality), and "
        f"{vocab_from.name}'s tokenizer (SmolLM2-135M) padded to {s['vocab']} tokens as in gen_gguf.py's GGUF.\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument(
        "--vocab-from", type=Path, help="the GGUF whose tokenizer is used (default SmolLM2 as gen_gguf.py finds it)"
    )
    p.add_argument("--tiny", action="store_true", help="gen_gguf.py --tiny's shapes (vocab 128256 unless --vocab)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default 128256)")
    a = p.parse_args(argv)
    s = dict(TINY if a.tiny else LLAMA31_8B)
    s["vocab"] = a.vocab or 128256
    out = write_model_folder(a.out, a.vocab_from or find_smollm2(), s)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"[hf_model] wrote {out}: {', '.join(sorted(f.name for f in out.iterdir()))} ({size / 2**20:.1f} MiB); "
        f"vocab {s['vocab']}, {s['layers']} layers, hidden {s['hidden']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
