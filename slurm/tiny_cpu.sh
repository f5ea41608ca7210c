#!/usr/bin/env bash
#SBATCH --job-name=loretta-tiny-cpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2              # two trainer processes, no GPU
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=00:30:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# The built-in tiny LLaMA on CPU, 2 processes on 1 node, a few steps: the same launcher as the
# LLaMA-2 scripts, small enough for tests and for checking a cluster setup. DS_CONFIG=auto, the
# LLaMA-2 scripts' default too, rather than the offload config this demo used to run: the job
# should show what a user's job does, and the fastest layout that fits is what auto gives them
# (here the replicated base, ZeRO-2). DS_CONFIG=ds_configs/zero3_offload.json shows offload.
#
#   sbatch slurm/tiny_cpu.sh
#   DRY_RUN=1 bash slurm/tiny_cpu.sh
set -euo pipefail

: "${MODEL:=tiny-llama}"
: "${DATA:=bundled:sentiment}"
: "${METHOD:=rep}"
: "${OUTPUT_DIR:=runs/tiny-cpu-${SLURM_JOB_ID:-dryrun}}"
: "${DS_CONFIG:=auto}"
: "${GPUS_PER_NODE:=${SLURM_NTASKS_PER_NODE:-2}}"
: "${EXTRA_ARGS:=--max_steps 30 --eval_batches 2}"
export MODEL DATA METHOD OUTPUT_DIR DS_CONFIG GPUS_PER_NODE EXTRA_ARGS
export LORETTA_DRY_RUN_NODES=1

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
