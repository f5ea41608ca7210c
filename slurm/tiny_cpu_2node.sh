#!/usr/bin/env bash
#SBATCH --job-name=loretta-tiny-cpu-2node
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2              # two trainer processes per node, no GPU
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G                         # host memory per node
#SBATCH --time=00:30:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# The built-in tiny LLaMA on CPU, 2 nodes x 2 processes, a few steps: the layout of the 13B and
# 70B scripts (several nodes, ranks in blocks per node, the first node hosting the rendezvous)
# with the same launcher, small enough for tests and for checking a multi-node setup: shared
# OUTPUT_DIR, the first node reachable from the others, MASTER_PORT open between nodes.
# DS_CONFIG=auto as in the LLaMA-2 scripts: the tiny base fits every process, so the trainer
# replicates it (ZeRO-2) and only the TT cores' gradients cross the nodes (docs/layouts.md);
# DS_CONFIG=ds_configs/zero3_offload.json runs the offload layout instead.
#
#   sbatch slurm/tiny_cpu_2node.sh
#   DRY_RUN=1 bash slurm/tiny_cpu_2node.sh
set -euo pipefail

: "${MODEL:=tiny-llama}"
: "${DATA:=bundled:sentiment}"
: "${METHOD:=rep}"
: "${OUTPUT_DIR:=runs/tiny-cpu-2node-${SLURM_JOB_ID:-dryrun}}"
: "${DS_CONFIG:=auto}"
: "${GPUS_PER_NODE:=${SLURM_NTASKS_PER_NODE:-2}}"
: "${EXTRA_ARGS:=--max_steps 30 --eval_batches 2}"
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
