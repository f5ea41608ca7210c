#!/usr/bin/env bash
# Step time of SmolLM2-135M-Instruct (the real checkpoint, benchmarks.smollm2.ensure_smollm2) under
# 2-process ZeRO-3 with CPU offload, through the real trainer (launch/train.py), LoRETTA against
# stock PEFT LoRA r=8 (--method lora) with the same DeepSpeed config, data, batch and steps.
#
#   nice -n 10 bash benchmarks/smollm2_speed.sh          # docs/benchmarks.md, section 8
#
# Runs alternate: for each repeat, for each config, for each method (rep lora rep lora ...), so
# each LoRETTA run has a LoRA run of the same config right next to it; the ratio "step / LoRA" is
# taken per repeat from those neighbours (load on a shared machine drifts between repeats) and
# reported as median and range. A run's step time is the median of rank 0's step_time_s
# (metrics.jsonl, forward + backward + optimizer step of the whole global batch) over its steps
# after WARMUP. Beside it, the CPU seconds of both ranks per measured step (/proc, user + system):
# on a loaded machine wall time also counts time spent descheduled, CPU time does not.
#
# Knobs (env):
#   METHODS="rep lora"       rep, adp, lora; rep_tt / adp_tt train only the TT cores (like LoRA,
#                            which trains no norms); rep / adp train the norms too unless
#                            TRAIN_NORMS=false
#   DS_CONFIGS=zero3_offload shipped names or JSON files, one block of rows each; the first is the
#                            reference of the "/ first config" columns
#   REPEATS=3 WARMUP=2 MEASURE=6 MICRO_BATCH=4 SEQ_LEN=64 DATA=bundled:instruct NPROC=2
#   PORT=29741               the rendezvous port (never 29500: other jobs on the machine use it)
#   PROFILE=1                also sample rank 0 with py-spy (when installed) from the first measured
#                            step to the end and print where the time goes
#                            (benchmarks/smollm2_profile.py breakdown); py-spy pauses the process to
#                            sample, so take timings from runs without it
#   OUT=benchmarks/results/smollm2_speed (speed.md, speed.json)   WORK=a temp dir (runs, logs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
OUT=${OUT:-benchmarks/results/smollm2_speed}
WARMUP=${WARMUP:-2}
MEASURE=${MEASURE:-6}
PORT=${PORT:-29741}
mkdir -p "$WORK" "$OUT"
MODEL=$("$PY" -c "from benchmarks.smollm2 import ensure_smollm2; print(ensure_smollm2())" | tail -1)

runs=()
for repeat in $(seq 1 "${REPEATS:-3}"); do
for config in ${DS_CONFIGS:-zero3_offload}; do
for method in ${METHODS:-rep lora}; do
    tag=$(basename "$config" .json)
    run="$WORK/$tag-$method-$repeat"
    echo "== $tag $method repeat $repeat (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    rm -rf "$run"
    # "rep_tt" / "adp_tt": the method with only its TT cores trained (like for like with LoRA,
    # which trains no norms); "rep" / "adp" train the norms too unless TRAIN_NORMS=false.
    flags=()
    case $method in
        lora) ;;
        *_tt) flags=(--train_norms false) ;;
        *) flags=(--train_norms "${TRAIN_NORMS:-true}") ;;
    esac
    deepspeed --num_gpus "${NPROC:-2}" --master_port "$PORT" launch/train.py --model "$MODEL" \
        --dataset "${DATA:-bundled:instruct}" --seq_len "${SEQ_LEN:-64}" --micro_batch_size "${MICRO_BATCH:-4}" \
        --method "${method%_tt}" ${flags[@]+"${flags[@]}"} --ds_config "$config" --max_steps $((WARMUP + MEASURE)) \
        --eval_every 0 --eval_batches 1 --save_every 0 --export false --output_dir "$run" >"$run.log" 2>&1 &
    launcher=$!
    # CPU seconds of both ranks over the measured steps (what descheduling does not inflate).
    "$PY" benchmarks/smollm2_profile.py watch "$run" "$WARMUP" $((WARMUP + MEASURE)) "$run.cpu.json" &
    watcher=$!
    if [[ ${PROFILE:-0} == 1 ]] && command -v py-spy >/dev/null; then
        # Sample rank 0 from the first measured step to the end of the run.
        until grep -q "\"step\": $((WARMUP + 1))," "$run/metrics.jsonl" 2>/dev/null || ! kill -0 "$launcher" 2>/dev/null; do sleep 0.5; done
        pid=$(pgrep -f -- "launch/train.py.*--local_rank=0.*--output_dir $run( |$)" | head -1 || true)
        if [[ -n $pid ]]; then py-spy record --pid "$pid" --idle --rate 50 -f raw -o "$run.pyspy" >/dev/null 2>&1 || true; fi
    fi
    wait "$launcher" || { tail -30 "$run.log" >&2; exit 1; }
    wait "$watcher" || true
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    "$PY" - "$run" "$tag" "$method" "$repeat" "$WARMUP" "$load" <<'PY'
import json, statistics, sys
run, tag, method, repeat, warmup, load = sys.argv[1:]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
steps = [r for r in rows if r.get("kind") == "train"][int(warmup):]
report = json.load(open(f"{run}/param_report.json"))
try:
    cpu = json.load(open(f"{run}.cpu.json"))
except OSError:
    cpu = {}
json.dump({"cpu_s_per_step": cpu.get("cpu_s_per_step"), "config": tag, "method": method, "repeat": int(repeat), "load_after": load,
           "trainable": report["trainable"]["numel"], "step_times_s": [r["step_time_s"] for r in steps],
           "step_time_s": statistics.median(r["step_time_s"] for r in steps),
           "tokens_per_step": statistics.median(r["tokens_per_s"] * r["step_time_s"] for r in steps)},
          open(f"{run}.json", "w"))
PY
    runs+=("$run")
done
done
done
args=()
for run in "${runs[@]}"; do args+=("$run.json"); done
command="REPEATS=${REPEATS:-3} WARMUP=$WARMUP MEASURE=$MEASURE METHODS=\"${METHODS:-rep lora}\" DS_CONFIGS=\"${DS_CONFIGS:-zero3_offload}\" MICRO_BATCH=${MICRO_BATCH:-4} SEQ_LEN=${SEQ_LEN:-64} DATA=${DATA:-bundled:instruct} bash benchmarks/smollm2_speed.sh"
"$PY" benchmarks/smollm2_profile.py table --out "$OUT" --command "$command" "${args[@]}"
if [[ ${PROFILE:-0} == 1 ]]; then
    for run in "${runs[@]}"; do
        if [[ -f $run.pyspy ]]; then "$PY" benchmarks/smollm2_profile.py breakdown "$run.pyspy" --label "$(basename "$run")"; fi
    done | tee "$OUT/profile.txt"
fi
echo "runs and logs in $WORK" >&2
