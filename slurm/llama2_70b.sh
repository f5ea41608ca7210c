#!/usr/bin/env bash
#SBATCH --job-name=loretta-llama2-70b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8              # one trainer process per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12               # data loading + the CPU optimizer step of offload
#SBATCH --mem=512G                       # host memory per node, see the note below
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@900              # 15 min before the time limit: checkpoint + requeue
#SBATCH --open-mode=append               # a requeued run appends to the same log
#SBATCH --output=%x-%j.out
##SBATCH --account=YOUR_ACCOUNT          # <-- SET ME (then delete one leading '#')
##SBATCH --partition=YOUR_GPU_PARTITION  # <-- SET ME (then delete one leading '#')
#
# LLaMA-2 70B + LoRETTA on 4 nodes x 8 GPUs. DS_CONFIG=auto (the default) lets the trainer pick the
# fastest DeepSpeed layout that fits (docs/layouts.md; `loretta-ds plan --ds_config auto` shows the
# choice): on 80 GB GPUs, ZeRO-3 with the bf16 base (138 GB) partitioned inside each node
# (zero_hpz_partition_size = GPUs per node), so after the first step the frozen weights' gathers
# stay on NVLink and only the TT cores' gradients cross nodes. On smaller GPUs the choice falls to
# ZeRO-3 with parameter offload; DS_CONFIG=ds_configs/zero3_offload.json forces it.
# Host memory: assumes >= 512 GB per node: while loading, each of the 8 ranks may hold one ~10 GB
# checkpoint shard (~80 GB per node); under offload each node's quarter of the bf16 weights (~35 GB)
# lives in pinned host memory, plus pinned transfer buffers and the page cache.
#
# Submit from the checkout:   sbatch slurm/llama2_70b.sh
# Override anything:          MODEL=/data/Llama-2-70b-hf OUTPUT_DIR=runs/x sbatch slurm/llama2_70b.sh
# Print the plan, no cluster: DRY_RUN=1 bash slurm/llama2_70b.sh
set -euo pipefail

: "${MODEL:=/models/Llama-2-70b-hf}"     # <-- SET ME: HF checkpoint directory every node can read
: "${DATA:=bundled:instruct}"            # dataset file, or a bundled demo task
: "${METHOD:=rep}"                       # rep (mergeable TT LoRA) | adp (TT adapters)
: "${OUTPUT_DIR:=runs/llama2-70b-${SLURM_JOB_ID:-dryrun}}"
: "${DS_CONFIG:=auto}"                   # or a DeepSpeed JSON, e.g. ds_configs/zero3_offload.json
: "${GPUS_PER_NODE:=${SLURM_NTASKS_PER_NODE:-8}}"
: "${EXTRA_ARGS:=}"
export MODEL DATA METHOD OUTPUT_DIR DS_CONFIG GPUS_PER_NODE EXTRA_ARGS
export LORETTA_DRY_RUN_NODES=4

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
