#!/usr/bin/env bash
# CI stage 1: the README's main-job command, verbatim, in a fresh virtual environment that holds
# nothing but what that command installs (no dev extras, nothing from the machine's Python), so
# a runtime dependency that only the test install pulls in fails here.
#
# Passes only if the command exits 0 and the run printed its final eval accuracy.
#
#   bash .ci/main_job.sh            a temporary venv, removed at the end
#   bash .ci/main_job.sh VENV_DIR   the venv is created in VENV_DIR and kept (.ci/run then runs the
#                                   test install in it: nothing of CI touches the machine's Python)
set -euo pipefail
cd "$(dirname "$0")/.."

# The first ```bash block of README.md is the main job (setup + run); take it as written.
command=$(awk '/^```bash$/ { inside = 1; next } inside && /^```$/ { exit } inside { print }' README.md)
if [[ -z $command ]]; then
    echo "main job: no \`\`\`bash block found in README.md" >&2
    exit 1
fi

log=$(mktemp /tmp/loretta-main-job.XXXXXX.log)
if [[ -n ${1:-} ]]; then
    venv=$1
    [[ ! -e $venv ]] || { echo "main job: $venv exists; give a new directory for the venv" >&2; exit 1; }
else
    venv=$(mktemp -d /tmp/loretta-runtime-venv.XXXXXX)
    trap 'rm -rf "$venv"' EXIT
fi
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"

echo "main job, in a fresh venv ($venv): $command"
start=$SECONDS
status=0
bash -c "$command" >"$log" 2>&1 || status=$?
elapsed=$((SECONDS - start))
# What the run reported at the end, and what the install put in the venv.
grep -E "finished [0-9]+ steps|^error" "$log" | tail -n 3 || true
echo "installed: $(pip list --format=freeze 2>/dev/null \
    | grep -iE '^(torch|transformers|accelerate|deepspeed|peft|datasets)==' | tr '\n' ' ' || true)"
if ((status != 0)); then
    echo "main job FAILED with exit $status after ${elapsed} s; the end of its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
if ! grep -qE "finished [0-9]+ steps: .*eval accuracy [0-9.]+ \(step [0-9]+\) -> [0-9.]+" "$log"; then
    echo "main job exited 0 but printed no final eval accuracy; the end of its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
# What the README promises of that run (learns the task, one summary, plot, merged export).
python .ci/check_main_job.py runs/demo "$log"
echo "main job passed in ${elapsed} s (install + run)"
