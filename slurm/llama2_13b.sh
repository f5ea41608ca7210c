#!/usr/bin/env bash
#SBATCH --job-name=loretta-llama2-13b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8              # one trainer process per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12               # data loading + the CPU optimizer step of offload
#SBATCH --mem=384G                       # host memory per node, see the note below
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600              # 10 min before the time limit: checkpoint + requeue
#SBATCH --open-mode=append               # a requeued run appends to the same log
#SBATCH --output=%x-%j.out
##SBATCH --account=YOUR_ACCOUNT          # <-- SET ME (then delete one leading '#')
##SBATCH --partition=YOUR_GPU_PARTITION  # <-- SET ME (then delete one leading '#')
#
# LLaMA-2 13B + LoRETTA on 2 nodes x 8 GPUs. DS_CONFIG=auto (the default) lets the trainer pick the
# fastest DeepSpeed layout that fits (docs/layouts.md; `loretta-ds plan --ds_config auto` shows the
# choice): on 80 GB GPUs the frozen bf16 base (26 GB) is replicated on every GPU (ZeRO-2), so only
# the TT cores' gradients cross the nodes. DS_CONFIG=ds_configs/zero3_offload.json forces offload.
# Host memory: assumes >= 384 GB per node: while loading, each of the 8 ranks may hold one ~10 GB
# checkpoint shard; should the choice fall to offload, each node's half of the bf16 weights lives in
# pinned host memory. The adapter's optimizer state is a few MB.
#
# Submit from the checkout:   sbatch slurm/llama2_13b.sh
# Override anything:          MODEL=/data/Llama-2-13b-hf OUTPUT_DIR=runs/x sbatch slurm/llama2_13b.sh
# Print the plan, no cluster: DRY_RUN=1 bash slurm/llama2_13b.sh
set -euo pipefail

: "${MODEL:=/models/Llama-2-13b-hf}"     # <-- SET ME: HF checkpoint directory every node can read
: "${DATA:=bundled:instruct}"            # dataset file, or a bundled demo task
: "${METHOD:=rep}"                       # rep (mergeable TT LoRA) | adp (TT adapters)
: "${OUTPUT_DIR:=runs/llama2-13b-${SLURM_JOB_ID:-dryrun}}"
: "${DS_CONFIG:=auto}"                   # or a DeepSpeed JSON, e.g. ds_configs/zero3_offload.json
: "${GPUS_PER_NODE:=${SLURM_NTASKS_PER_NODE:-8}}"
: "${EXTRA_ARGS:=}"
export MODEL DATA METHOD OUTPUT_DIR DS_CONFIG GPUS_PER_NODE EXTRA_ARGS
export LORETTA_DRY_RUN_NODES=2

# sbatch runs a copy of this file from its spool directory: find the checkout through
# LORETTA_ROOT, next to this file, or in the directory the job was submitted from.
for root in "${LORETTA_ROOT:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-$PWD}"; do
    if [[ -n $root && -f $root/slurm/_launch.sh ]]; then
        LORETTA_ROOT="$(cd "$root" && pwd)"
        export LORETTA_ROOT
        exec bash "$LORETTA_ROOT/slurm/_launch.sh" run
    fi
done
echo "[launch] ERROR: slurm/_launch.sh not found; submit from the loretta_ds checkout or set LORETTA_ROOT" >&2
exit 2
