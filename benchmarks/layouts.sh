#!/usr/bin/env bash
# The DeepSpeed layouts side by side on the local two-node SLURM cluster (.ci/slurm_cluster.sh):
#   1. bytes crossing the node boundary per step (node2's veth counters, a SHORT- and a LONG-step
#      job each) of the built-in tiny model under auto, zero2, hpz and offload_flat (the previous
#      default), and of a wider model (the same TT cores, a 20x larger frozen base) under auto;
#   2. tokens/s in alternating rounds (every layout once per round): tiny on 2 nodes x 2 (SLURM),
#      tiny and SmolLM2-135M on 1 node x 2 (the deepspeed launcher here); the offload layout is the
#      baseline of each ratio and of the adapter comparison.
# Results: one JSON per measurement and the tables under OUT (default
# benchmarks/results/layouts); the jobs' run directories and logs under WORK (a temp dir).
#
#   bash .ci/slurm_cluster.sh start && eval "$(bash .ci/slurm_cluster.sh env)" && bash benchmarks/layouts.sh
#
# Knobs (env): PARTS="bytes speed-tiny-2n speed-tiny-1n speed-smollm2" REPEATS=2 SMOL_REPEATS=2
#              STEPS=14 SMOL_STEPS=8 SHORT=2 LONG=12 PORT_TINY=29711 PORT_SMOL=29710 WORK=<dir>
#              OUT=<dir> PYTHON=python
# The machine's CPUs are shared by both nodes (and by anything else running): the alternating
# rounds put a busy phase on every layout alike; the byte counts do not depend on the load.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: "${SLURM_CONF:?set SLURM_CONF: eval \"\$(bash .ci/slurm_cluster.sh env)\"}"
WORK=${WORK:-$(mktemp -d)}
OUT=${OUT:-benchmarks/results/layouts}
PARTS=${PARTS:-bytes speed-tiny-2n speed-tiny-1n speed-smollm2}
mkdir -p "$WORK" "$OUT"

layouts() {  # layouts PART ...: the harness command for one part, its JSON results copied to OUT
    local part=$1
    shift
    echo "== $part ($(date -u +%H:%M:%S) UTC)" >&2
    "$PY" -m benchmarks.harness.layouts "$@" --work "$WORK/$part" | tee "$OUT/$part.md"
    cp "$WORK/$part"/*.json "$OUT/"
}

for part in $PARTS; do
    case $part in
        bytes)
            layouts bytes-tiny bytes --model tiny --layouts auto zero2 hpz offload_flat \
                --short "${SHORT:-2}" --long "${LONG:-12}"
            layouts bytes-wide bytes --model wide --layouts auto --short "${SHORT:-2}" --long "${LONG:-12}"
            ;;
        speed-tiny-2n)
            layouts "$part" speed --model tiny --nodes 2 --layouts auto offload_flat \
                --repeats "${REPEATS:-2}" --steps "${STEPS:-14}"
            ;;
        # 1 node x 2 with the deepspeed launcher on this machine (--here PORT), not through SLURM.
        speed-tiny-1n)
            layouts "$part" speed --model tiny --nodes 1 --layouts auto zero3_offload \
                --repeats "${REPEATS:-2}" --steps "${STEPS:-14}" --here "${PORT_TINY:-29711}"
            ;;
        speed-smollm2)
            layouts "$part" speed --model smollm2 --nodes 1 --layouts auto zero3_offload \
                --repeats "${SMOL_REPEATS:-2}" --steps "${SMOL_STEPS:-8}" --warmup 2 --here "${PORT_SMOL:-29710}"
            ;;
        *)
            echo "unknown part '$part' (bytes speed-tiny-2n speed-tiny-1n speed-smollm2)" >&2
            exit 2
            ;;
    esac
done
"$PY" -m benchmarks.harness.layouts table "$OUT" >"$OUT/all.md"
echo "tables in $OUT; runs and logs in $WORK" >&2
