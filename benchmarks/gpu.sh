#!/usr/bin/env bash
# LoRETTA on one accelerator: tokens/s and peak memory of the frozen floor, LoRETTA_rep,
# LoRETTA_adp and LoRA on a LLaMA-2-7B-shaped model (hidden 4096, intermediate 11008, random
# weights, LAYERS layers), bf16, sdpa attention (and flash-attn 2 when it is installed).
# Prints one table; OUT=path also writes it to a file (and the full report to ${OUT%.*}.json).
#
# Installs nothing from the network: the machine may be offline. Needs torch (with CUDA) and
# transformers already installed; loretta_ds comes from this checkout (editable install without
# dependencies if possible, else PYTHONPATH). PEFT is optional (a plain LoRA layer stands in).
#
# Knobs (env): LAYERS=4 BATCH=4 SEQ_LEN=1024 STEPS=10 WARMUP=3 DEVICE=cuda DTYPE=bf16 PYTHON=python
#              HIDDEN INTERMEDIATE HEADS VOCAB (defaults: LLaMA-2-7B's) ATTN (default: auto)
#              CONTENDERS=floor,rep,adp,lora TRAIN_NORMS=true (false: LoRETTA trains no norms, like LoRA)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "error: torch is not installed for $PY; install a CUDA build of torch first (this script installs nothing)" >&2
    exit 2
fi
DEVICE=${DEVICE:-cuda}
if [[ $DEVICE == cuda* ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device; run on a GPU machine or set DEVICE=cpu" >&2
    exit 2
fi
if ! "$PY" -c "import transformers" 2>/dev/null; then
    echo "error: transformers is not installed; the benchmark builds its LLaMA model with it (random weights," \
         "no download, but the library itself is needed): pip install transformers" >&2
    exit 2
fi
if ! "$PY" -c "import loretta_ds" 2>/dev/null; then
    # --no-deps/--no-build-isolation: nothing is fetched; fall back to the source tree if pip cannot.
    if ! { "$PY" -m pip install --no-deps --no-build-isolation -q -e . >/dev/null 2>&1 \
           && "$PY" -c "import loretta_ds" 2>/dev/null; }; then
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
        echo "note: using loretta_ds from $PWD via PYTHONPATH" >&2
    fi
fi
"$PY" -c "import peft" 2>/dev/null || echo "note: peft is not installed; LoRA runs as a plain LoRA layer" >&2

if [[ -z ${ATTN:-} ]]; then
    ATTN=sdpa
    if "$PY" -c "import flash_attn" 2>/dev/null; then ATTN=sdpa,flash_attention_2; fi
fi

args=(--device "$DEVICE" --dtype "${DTYPE:-bf16}"
      --hidden "${HIDDEN:-4096}" --intermediate "${INTERMEDIATE:-11008}" --heads "${HEADS:-32}"
      --vocab "${VOCAB:-32000}" --layers "${LAYERS:-4}" --batch "${BATCH:-4}" --seq_len "${SEQ_LEN:-1024}"
      --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" --attn "$ATTN"
      --contenders "${CONTENDERS:-floor,rep,adp,lora}" --train_norms "${TRAIN_NORMS:-true}")
if [[ -n ${OUT:-} ]]; then
    args+=(--out "$OUT" --json "${OUT%.*}.json")
fi
exec "$PY" -m benchmarks.harness.gpu "${args[@]}"
