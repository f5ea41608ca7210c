#!/usr/bin/env bash
# Start the local SLURM cluster, run the tests marked `slurm` against it, always stop it again.
#   bash .ci/slurm_tests.sh [extra pytest args]
# Exit status: pytest's (the cluster is stopped whatever happens).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cluster=.ci/slurm_cluster.sh

cleanup() {
    local rc=$?
    local logs="${LORETTA_SLURM_DIR:-/tmp/loretta_slurm}/log"
    if ((rc != 0)) && [[ -d $logs ]]; then
        tail -n 30 "$logs"/*.log >&2 || true
    fi
    bash "$cluster" stop || echo "[slurm_tests] warning: stopping the cluster failed" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$cluster" start
eval "$(bash "$cluster" env)"
export SLURM_CONF LORETTA_SLURM=1

python -m pytest -m slurm -v -rs "$@"
