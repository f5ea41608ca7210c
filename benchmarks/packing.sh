#!/usr/bin/env bash
# Padded vs packed training through the real trainer on the bundled chat task (bundled:chat, a
# long tail of one to eight turns): NPROC processes (default 2), ZeRO-3 with CPU offload, the
# same micro batch size (examples padded to the longest of the batch, or rows of SEQ_LEN packed
# tokens), so both runs see about the same number of token slots per step.
# Reports the medians of real (non-pad) tokens/s and step time over the measured steps, and their
# ratios, alternating padded / packed REPEATS times. Model: a random LLaMA of hidden HIDDEN (768),
# LAYERS (2) layers with the tiny-llama tokenizer (benchmarks/comm.sh's), or MODEL=... (e.g. tiny-llama).
#
# Knobs (env): NPROC=2 HIDDEN=768 LAYERS=2 INTERMEDIATE=2048 HEADS=12 MICRO_BATCH=8 SEQ_LEN=256
#              WARMUP=3 MEASURE=10 REPEATS=3 METHOD=rep MODEL=<dir> WORK=<dir> OUT=<file> PYTHON=python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
WARMUP=${WARMUP:-3}
MEASURE=${MEASURE:-10}
mkdir -p "$WORK"

model=${MODEL:-}
if [[ -z $model ]]; then
    model="$WORK/model"
    "$PY" -m benchmarks.harness.comm make-model "$model" --hidden "${HIDDEN:-768}" --layers "${LAYERS:-2}" \
        --intermediate "${INTERMEDIATE:-2048}" --heads "${HEADS:-12}"
fi

runs=()
for repeat in $(seq 1 "${REPEATS:-3}"); do
for mode in padded packed; do
    run="$mode-$repeat"
    echo "== $run" >&2
    rm -rf "${WORK:?}/$run"
    flags=()
    [[ $mode == packed ]] && flags=(--packing)
    # a free port: other jobs on the machine may hold DeepSpeed's default 29500
    port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    deepspeed --num_gpus "${NPROC:-2}" --master_port "$port" launch/train.py --model "$model" \
        --method "${METHOD:-rep}" --ds_config ds_configs/zero3_offload.json --dataset bundled:chat \
        --seq_len "${SEQ_LEN:-256}" --micro_batch_size "${MICRO_BATCH:-8}" --grad_accum 1 ${flags[@]+"${flags[@]}"} \
        --max_steps $((WARMUP + MEASURE)) --eval_every 0 --eval_batches 1 --save_every 0 --export false \
        --output_dir "$WORK/$run" >"$WORK/$run.log" 2>&1 || { tail -30 "$WORK/$run.log" >&2; exit 1; }
    runs+=("$WORK/$run")
done
done

"$PY" - "$WARMUP" "${OUT:-}" "${runs[@]}" <<'PY'
import json
import re
import statistics
import sys
from pathlib import Path

warmup, out, runs = int(sys.argv[1]), sys.argv[2], [Path(p) for p in sys.argv[3:]]
per_mode = {"padded": [], "packed": []}
for run in runs:
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train" and r["step"] > warmup]
    per_mode[run.name.split("-")[0]].append((statistics.median(r["tokens_per_s"] for r in steps),
                                             statistics.median(r["step_time_s"] for r in steps)))
log = Path(str(runs[-1]) + ".log").read_text()
efficiency = re.search(r"packing: .*", log).group(0)
lines = ["| run | real tokens/s (median per run) | step time s (median per run) |", "|---|---|---|"]
for mode, values in per_mode.items():
    lines.append(f"| {mode} | {', '.join(f'{t:,.0f}' for t, _ in values)} | "
                 f"{', '.join(f'{s:.3f}' for _, s in values)} |")
pairs = list(zip(per_mode["packed"], per_mode["padded"]))
tokens = [p[0] / q[0] for p, q in pairs]
steps = [p[1] / q[1] for p, q in pairs]
lines += ["", f"packed / padded real tokens/s: median {statistics.median(tokens):.2f}x "
          f"(pairs {min(tokens):.2f}-{max(tokens):.2f}x); step time {statistics.median(steps):.2f}x "
          f"(pairs {min(steps):.2f}-{max(steps):.2f}x)", f"packed run log: {efficiency}"]
text = "\n".join(lines)
print(text)
if out:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")
PY
echo "runs and logs in $WORK" >&2
