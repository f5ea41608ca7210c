#!/usr/bin/env bash
# The layouts of `--ds_config auto` on one GPU node, through the real trainer (the deepspeed
# launcher, one process per GPU): tokens/s, step time, peak memory and the adapter's agreement of
# auto (the planner's pick), zero2 (frozen base replicated), zero3 (partitioned over the node) and
# zero3_offload (the baseline), in alternating rounds, on a LLaMA-2-7B-shaped model (random bf16
# weights written once into WORK), bf16, packed rows of SEQ_LEN tokens, gradient checkpointing.
# Prints one table; OUT=path also writes it (and the records as ${OUT%.*}.json).
#
# Installs nothing from the network. Needs torch with CUDA, transformers and deepspeed installed;
# loretta_ds comes from this checkout (PYTHONPATH). Memory: zero2 keeps the whole bf16 base (13.5 GB
# at 32 layers) on every GPU; with GPUS=1 every layout fits an 80 GB GPU, so the rows compare the
# layouts' own costs (offload copies the base over PCIe every step).
#
# Knobs (env): GPUS (default: every visible GPU) LAYERS=32 SEQ_LEN=4096 MICRO_BATCH=1 STEPS=12
#              WARMUP=3 REPEATS=2 CHECKPOINTING=true LAYOUTS="auto zero2 zero3 zero3_offload"
#              HIDDEN INTERMEDIATE HEADS VOCAB (defaults: LLaMA-2-7B's) WORK=<dir> PYTHON=python
#              DRY_RUN=1: print the command and check the inputs, run nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

for module in torch transformers deepspeed; do
    if ! "$PY" -c "import $module" 2>/dev/null; then
        echo "error: $module is not installed for $PY (this script installs nothing)" >&2
        exit 2
    fi
done
if [[ -z ${GPUS:-} ]]; then
    GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
if ! [[ $GPUS =~ ^[1-9][0-9]*$ ]] && [[ ${DRY_RUN:-0} != 1 ]]; then
    echo "error: no CUDA device visible (GPUS=$GPUS); run on a GPU node, or DRY_RUN=1 to check the command" >&2
    exit 2
fi
command -v deepspeed >/dev/null || { echo "error: the deepspeed launcher is not on PATH" >&2; exit 2; }

WORK=${WORK:-$(mktemp -d)}
# shellcheck disable=SC2206  # LAYOUTS is a space-separated list
layouts=(${LAYOUTS:-auto zero2 zero3 zero3_offload})
args=(--work "$WORK" --gpus "${GPUS:-1}" --layouts "${layouts[@]}"
      --hidden "${HIDDEN:-4096}" --intermediate "${INTERMEDIATE:-11008}" --heads "${HEADS:-32}"
      --vocab "${VOCAB:-32000}" --layers "${LAYERS:-32}" --seq_len "${SEQ_LEN:-4096}"
      --micro_batch "${MICRO_BATCH:-1}" --gradient_checkpointing "${CHECKPOINTING:-true}"
      --steps "${STEPS:-12}" --warmup "${WARMUP:-3}" --repeats "${REPEATS:-2}")
[[ -n ${OUT:-} ]] && args+=(--out "$OUT")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "$PY" -m benchmarks.harness.gpu_layouts "${args[@]}"
    echo
    "$PY" -m benchmarks.harness.gpu_layouts --help >/dev/null
    for layout in "${layouts[@]}"; do
        case $layout in
            auto) ;;
            zero2 | zero3 | zero3_offload) [[ -f ds_configs/$layout.json ]] || { echo "error: ds_configs/$layout.json missing" >&2; exit 2; } ;;
            *) echo "error: unknown layout $layout" >&2; exit 2 ;;
        esac
    done
    echo "DRY_RUN=1: inputs checked, nothing run" >&2
    exit 0
fi
exec "$PY" -m benchmarks.harness.gpu_layouts "${args[@]}"
