#!/usr/bin/env bash
# Real (non-pad) tokens per second on variable-length chat data (bundled:chat: one to eight turns,
# a long tail, median well below SEQ_LEN), 2 processes, ZeRO-3 with CPU offload, for:
#   rep-padded  rep-packed    loretta_ds LoRETTA_rep, micro batches padded to their longest / packed rows
#   lora-packed               loretta_ds's PEFT LoRA baseline (r=8 on the same targets), packed
#   hf-lora                   HF Trainer + stock PEFT LoRA + the same resolved DeepSpeed config (padded:
#                             Trainer's default), benchmarks/hf_trainer_lora.py
# Each repeat runs all four back to back (the order rotates), so machine load hits them alike; the
# report (benchmarks/throughput_report.py) gives per-run medians over the measured steps and the ratios
# of each repeat, with their spread.
#
# Knobs (env): NPROC=2 HIDDEN=768 LAYERS=2 INTERMEDIATE=2048 HEADS=12 MICRO_BATCH=8 SEQ_LEN=256
#              WARMUP=2 MEASURE=6 REPEATS=2 MODEL=<dir> WORK=<dir> OUT=<file> PYTHON=python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
WARMUP=${WARMUP:-2}
MEASURE=${MEASURE:-6}
STEPS=$((WARMUP + MEASURE))
mkdir -p "$WORK"

model=${MODEL:-}
if [[ -z $model ]]; then
    model="$WORK/model"
    [[ -f $model/config.json ]] || "$PY" -m benchmarks.harness.comm make-model "$model" --hidden "${HIDDEN:-768}" \
        --layers "${LAYERS:-2}" --intermediate "${INTERMEDIATE:-2048}" --heads "${HEADS:-12}"
fi

free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

loretta_run() {  # NAME METHOD [--packing]
    local name=$1 method=$2
    shift 2
    rm -rf "${WORK:?}/$name"
    deepspeed --num_gpus "${NPROC:-2}" --master_port "$(free_port)" launch/train.py --model "$model" \
        --method "$method" --ds_config ds_configs/zero3_offload.json --dataset bundled:chat \
        --seq_len "${SEQ_LEN:-256}" --micro_batch_size "${MICRO_BATCH:-8}" --grad_accum 1 "$@" \
        --max_steps "$STEPS" --eval_every 0 --eval_batches 1 --save_every 0 --export false \
        --output_dir "$WORK/$name" >"$WORK/$name.log" 2>&1 || { tail -30 "$WORK/$name.log" >&2; exit 1; }
}

hf_run() {  # NAME RESOLVED_RUN_CONFIG
    local name=$1
    rm -rf "${WORK:?}/$name"
    deepspeed --num_gpus "${NPROC:-2}" --master_port "$(free_port)" benchmarks/hf_trainer_lora.py --model "$model" \
        --ds_config "$2" --dataset bundled:chat --seq_len "${SEQ_LEN:-256}" --max_steps "$STEPS" \
        --metrics "$WORK/$name/metrics.jsonl" >"$WORK/$name.log" 2>&1 || { tail -30 "$WORK/$name.log" >&2; exit 1; }
}

# HF Trainer gets the DeepSpeed config exactly as loretta_ds resolves it for LoRA on this model
# and batch and steps (a run of the same length writes it to run_config.json; it is not measured).
loretta_run lora-config lora
resolved="$WORK/lora-config/run_config.json"

modes=(rep-padded rep-packed lora-packed hf-lora)
runs=()
for repeat in $(seq 1 "${REPEATS:-2}"); do
    for offset in 0 1 2 3; do
        mode=${modes[$(((offset + repeat - 1) % 4))]}
        run="$mode-$repeat"
        echo "== $run" >&2
        case $mode in
            rep-padded) loretta_run "$run" rep ;;
            rep-packed) loretta_run "$run" rep --packing ;;
            lora-packed) loretta_run "$run" lora --packing ;;
            hf-lora) hf_run "$run" "$resolved" ;;
        esac
        runs+=("$WORK/$run")
    done
done

"$PY" benchmarks/throughput_report.py --warmup "$WARMUP" ${OUT:+--out "$OUT"} "${runs[@]}"
echo "runs and logs in $WORK" >&2
