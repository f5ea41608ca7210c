#!/bin/bash
# Step time of the same 2-process training run from two checkouts of this repository, alternating:
# ZeRO-3 + CPU offload, LoRETTA_rep, a random hidden-768 2-layer LLaMA, bundled:chat at 256 tokens,
# micro batch 8, padded and packed, 8 steps (the first 2 left out of the medians).
#
#   git worktree add /tmp/base <commit>
#   BASE=/tmp/base NEW=. REPS="1 2 3" bash benchmarks/ab_checkouts.sh
#
# Each checkout runs its own launch/train.py, which puts its own loretta_ds first on sys.path.
set -euo pipefail
BASE=$(cd "${BASE:?a checkout to compare against}" && pwd)
NEW=$(cd "${NEW:-.}" && pwd)
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
model=$WORK/model
[[ -f $model/config.json ]] || (cd "$NEW" && python -m benchmarks.harness.comm make-model "$model" --hidden 768 \
    --layers 2 --intermediate 2048 --heads 12)
free_port() { python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
run() {  # TREE NAME [flags]
    local tree=$1 name=$2
    shift 2
    rm -rf "${WORK:?}/$name"
    (cd "$tree" && OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --master_port "$(free_port)" launch/train.py \
        --model "$model" --method rep --ds_config ds_configs/zero3_offload.json --dataset bundled:chat \
        --seq_len 256 --micro_batch_size 8 --grad_accum 1 "$@" --max_steps 8 --eval_every 0 --eval_batches 1 \
        --save_every 0 --export false --output_dir "$WORK/$name" >"$WORK/$name.log" 2>&1)
}
for r in ${REPS:-1 2 3}; do
    if ((r % 2)); then order="base new"; else order="new base"; fi
    for side in $order; do
        tree=$BASE
        [[ $side == new ]] && tree=$NEW
        run "$tree" "$side-padded-$r"
        run "$tree" "$side-packed-$r" --packing
    done
done
WORK=$WORK python - <<'PY'
import glob, json, os, statistics

rows = {}
for path in sorted(glob.glob(os.path.join(os.environ["WORK"], "*-*-*", "metrics.jsonl"))):
    side, mode, repeat = os.path.basename(os.path.dirname(path)).split("-")
    steps = [json.loads(line) for line in open(path) if json.loads(line).get("kind") == "train"][2:]
    rows.setdefault(mode, {}).setdefault(side, {})[int(repeat)] = (
        statistics.median(s["step_time_s"] for s in steps), statistics.median(s["tokens_per_s"] for s in steps))
for mode, sides in rows.items():
    for side in ("base", "new"):
        print(mode, side, {r: f"{t:.3f} s, {k:,.0f} tok/s" for r, (t, k) in sorted(sides[side].items())})
    ratios = {r: sides["new"][r][1] / sides["base"][r][1] for r in sorted(sides["new"]) if r in sides["base"]}
    print(mode, "new/base real tokens/s per repeat", {r: round(x, 3) for r, x in ratios.items()},
          "median", round(statistics.median(ratios.values()), 3))
PY
