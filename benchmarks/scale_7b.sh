#!/usr/bin/env bash
# LLaMA-2-7B on one CPU machine with the project's own commands, as a user runs them (not CI: it takes
# long). Every process's peak resident memory is sampled (benchmarks/rss_sampler.py) and set beside
# `loretta-ds estimate` for the same run; results in docs/benchmarks.md ("LLaMA-2-7B on one machine").
#
#   bash benchmarks/scale_7b.sh [WORK_DIR]        (default ~/.cache/loretta_ds/scale7b; ~14 GB of disk
#                                                  for the model, ~14 GB more for the merged export)
#
# Settings (environment): PRESET=llama2-7b, LAYERS= (all; 1-2 for a width-exact slice), VOCAB=32000,
# MODEL=WORK_DIR/PRESET (reused if complete), PROCS=2, STEPS=2, SEQ_LEN=8, MASTER_PORT=29730, LIMIT_GIB=16
# (every sampled command is killed when its processes' anonymous memory passes it),
# STAGES="write floor estimate train resume export reload" (a subset runs only those stages).
# A quick rehearsal of the whole pipeline: PRESET=llama2-13b LAYERS=1 VOCAB=1024 bash benchmarks/scale_7b.sh /tmp/s
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORK=${1:-$HOME/.cache/loretta_ds/scale7b}
PRESET=${PRESET:-llama2-7b}
LAYERS=${LAYERS:-}
VOCAB=${VOCAB:-32000}
MODEL=${MODEL:-$WORK/$PRESET${LAYERS:+-$LAYERS-layers}}
PROCS=${PROCS:-2}
STEPS=${STEPS:-2}
SEQ_LEN=${SEQ_LEN:-8}
MASTER_PORT=${MASTER_PORT:-29730}
STAGES=${STAGES:-write floor estimate train resume export reload}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
mkdir -p "$WORK"
PY=${PYTHON:-python}
LIMIT_GIB=${LIMIT_GIB:-16}
stage() { [[ " $STAGES " == *" $1 "* ]]; }
sampled() { local name=$1; shift; echo "+ $*" | tee -a "$WORK/commands.txt"
  /usr/bin/time -f "$name: %e s wall" "$PY" -m benchmarks.rss_sampler --limit_gib "$LIMIT_GIB" --out "$WORK/$name.rss.json" -- "$@" 2>&1 \
    | tee "$WORK/$name.log"; }
# zero3_offload with ZeRO-3's working set bounded: at its 1e9 live / reuse parameters each process would
# keep about 2 GiB of 7B's weights gathered, which two processes on 24 GiB cannot spare.
DS_CONFIG=$WORK/zero3_offload_bounded.json
"$PY" - "$DS_CONFIG" <<'EOF'
import json, sys
config = json.load(open("ds_configs/zero3_offload.json"))
config["zero_optimization"].update(stage3_max_live_parameters=2e8, stage3_max_reuse_distance=2e8)
json.dump(config, open(sys.argv[1], "w"), indent=1)
EOF
train_args=(--model "$MODEL" --ds_config "$DS_CONFIG" --bf16 --method rep --max_steps "$STEPS"
            --save_every 1 --seq_len "$SEQ_LEN" --micro_batch_size 1 --grad_accum 1 --eval_every 0 --eval_batches 1 --export false
            --seed 0)
launcher() { if [ "$PROCS" -gt 1 ]; then echo deepspeed --num_gpus "$PROCS" --master_port "$MASTER_PORT";
             else echo "$PY"; fi; }

if stage write && [ ! -f "$MODEL/model.safetensors.index.json" ]; then
  sampled write "$PY" -m benchmarks.llama2_checkpoint "$PRESET" "$MODEL" ${LAYERS:+--layers "$LAYERS"} \
    --vocab_size "$VOCAB"
fi
if stage floor; then
  "$PY" -m benchmarks.layer_floor --preset "$PRESET" --tokens "$SEQ_LEN" | tee "$WORK/floor.json"
fi
if stage estimate; then
  "$PY" -m loretta_ds.cli estimate --model "$MODEL" --method rep --nodes 1 --gpus_per_node "$PROCS" \
    --ds_config "$DS_CONFIG" --bf16 --seq_len "$SEQ_LEN" --micro_batch_size 1 | tee "$WORK/estimate.txt"
fi
if stage train; then
  rm -rf "$WORK/run"
  # shellcheck disable=SC2046
  sampled train $(launcher) launch/train.py "${train_args[@]}" --output_dir "$WORK/run"
fi
if stage resume; then
  # The run again from its first checkpoint: the adapter after the last step must be the same bits.
  rm -rf "$WORK/resumed"
  cp -r "$WORK/run" "$WORK/resumed"
  rm -rf "$WORK/resumed/adapter" "$WORK/resumed/checkpoints/step-$STEPS" "$WORK/resumed/run_config.json"
  # shellcheck disable=SC2046
  sampled resume $(launcher) launch/train.py "${train_args[@]}" --output_dir "$WORK/resumed" --resume auto
  "$PY" - "$WORK" <<'EOF'
import sys
from safetensors.torch import load_file
work = sys.argv[1]
a, b = (load_file(f"{work}/{run}/adapter/adapter.safetensors") for run in ("run", "resumed"))
assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "the resumed adapter differs"
print(f"resume: {len(a)} adapter tensors bit-identical")
EOF
fi
if stage export; then
  rm -rf "$WORK/merged" "$WORK/peft"
  sampled export "$PY" -m loretta_ds.cli export "$WORK/run" "$WORK/merged"
  sampled export_peft "$PY" -m loretta_ds.cli export "$WORK/run" "$WORK/peft" --format peft-lora
fi
if stage reload; then
  # Stock transformers and PEFT only, in bf16 (float32 copies of 7B would not fit beside each other).
  sampled reload env -u PYTHONPATH "$PY" tests/stock_reload.py "$MODEL" "$WORK/merged" "$WORK/peft" \
    "$WORK/logits.pt" bfloat16
  "$PY" -c "
import torch; s = torch.load('$WORK/logits.pt')
print('stock reload (bf16): merged vs base + adapter (PEFT) max |diff| %.3g, base + adapter vs base %.3g, |logit| max %.3g'
      % ((s['merged'] - s['peft']).abs().max(), (s['peft'] - s['base']).abs().max(), s['peft'].abs().max()))"
fi
