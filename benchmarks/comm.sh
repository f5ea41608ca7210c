#!/usr/bin/env bash
# Communication and step time of LoRETTA_rep, LoRETTA_adp and LoRA through the real trainer:
# NPROC processes (default 2) on this machine, ZeRO-3 with CPU offload of parameters and optimizer
# (ds_configs/zero3_offload.json), gloo on CPU (nccl on GPUs), DeepSpeed's comms logger on.
# Prints one table (OUT=path also writes it). Model: a random LLaMA of hidden HIDDEN (768),
# LAYERS (2) layers, with the built-in tiny-llama tokenizer; data: the bundled demo task.
#
# Knobs (env): NPROC=2 HIDDEN=768 LAYERS=2 INTERMEDIATE=2048 HEADS=12 MICRO_BATCH=8 SEQ_LEN=128
#              WARMUP=3 MEASURE=10 METHODS="rep adp lora" REPEATS=1 WORK=<dir, default a temp dir>
#              PYTHON=python TRAIN_NORMS=true. TRAIN_NORMS=false: rep and adp train only their TT
#              cores, like for like with LoRA (which never trains norms).
#              With REPEATS>1 the methods alternate (rep adp lora rep adp lora ...) and the times
#              are medians over the repeats; byte counts do not vary between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
WARMUP=${WARMUP:-3}
MEASURE=${MEASURE:-10}
mkdir -p "$WORK"

"$PY" -m benchmarks.harness.comm make-model "$WORK/model" --hidden "${HIDDEN:-768}" --layers "${LAYERS:-2}" \
    --intermediate "${INTERMEDIATE:-2048}" --heads "${HEADS:-12}"
"$PY" -m benchmarks.harness.comm ds-config ds_configs/zero3_offload.json "$WORK/ds_config.json"

dirs=()
for repeat in $(seq 1 "${REPEATS:-1}"); do
for method in ${METHODS:-rep adp lora}; do
    run="$method-$repeat"
    echo "== $run" >&2
    rm -rf "${WORK:?}/$run"
    # a free port: other jobs on the machine may hold DeepSpeed's default 29500
    flags=()
    if [[ $method != lora ]]; then flags=(--train_norms "${TRAIN_NORMS:-true}"); fi
    port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    deepspeed --num_gpus "${NPROC:-2}" --master_port "$port" benchmarks/comm_train.py --model "$WORK/model" --method "$method" ${flags[@]+"${flags[@]}"} \
        --ds_config "$WORK/ds_config.json" --output_dir "$WORK/$run" \
        --max_steps $((WARMUP + MEASURE + 1)) --comm_warmup "$WARMUP" --comm_steps "$MEASURE" \
        --micro_batch_size "${MICRO_BATCH:-8}" --seq_len "${SEQ_LEN:-128}" \
        --eval_every 0 --eval_batches 1 --save_every 0 --export false >"$WORK/$run.log" 2>&1 \
        || { tail -30 "$WORK/$run.log" >&2; exit 1; }
    dirs+=("$WORK/$run")
done
done
"$PY" -m benchmarks.harness.comm table "${dirs[@]}" ${OUT:+--out "$OUT"}
echo "runs and logs in $WORK" >&2
