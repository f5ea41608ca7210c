#!/usr/bin/env bash
# Shared launcher for the sbatch scripts in this folder: one trainer process per GPU via srun.
#
#   _launch.sh run    validate the inputs, resolve nodes / master / world size, start
#                     `srun ... _launch.sh task ...` and handle preemption (DRY_RUN=1: print all
#                     of it, start nothing)
#   _launch.sh task   (inside srun, one per process) map SLURM_PROCID / SLURM_LOCALID to the
#                     RANK / LOCAL_RANK that deepspeed.init_distributed reads, exec the trainer
#
# Inputs (environment; the sbatch scripts set defaults):
#   MODEL          HF model directory (or name); a value that looks like a path must exist
#   DATA           dataset name or path, or several weighted ones (a.jsonl:0.7,b.jsonl:0.3 or
#                  space-separated; quote a path with spaces or commas: DATA='"/data/my set.jsonl":0.7');
#                  a value that looks like a path must exist
#   METHOD         LoRETTA method (rep | adp)
#   OUTPUT_DIR     run directory: checkpoints, adapter/, merged/
#   DS_CONFIG      auto (the trainer picks the fastest DeepSpeed layout that fits, from the model,
#                  the GPUs' memory and the processes per node: docs/layouts.md), or a DeepSpeed
#                  JSON (absolute, relative to the current directory, or to the checkout)
#   GPUS_PER_NODE  processes per node (one per GPU; on CPU, one per process wanted)
#   EXTRA_ARGS     more trainer arguments, split into words as a shell splits them (quote a value
#                  with spaces: EXTRA_ARGS='--chat_template "/data/my templates/t.jinja"')
#   MASTER_PORT    rendezvous port (default: derived from the job id)
#   PYTHON         interpreter for the trainer (default: python3)
#   MAX_REQUEUES   give up after this many restarts of the same job (default 50)
#   DRY_RUN=1      check every input as the job would, print the plan and exit (exit 2 on a
#                  problem); outside SLURM, SLURM_JOB_NODELIST may be any host list
#                  (gpu[01-04], node[1-2,5], a01,b02); default: this host
#   DRY_RUN=plan   the same on a machine that does not hold the cluster's files (a laptop, a
#                  fresh clone): a MODEL or DATA path missing here is a warning, not a refusal;
#                  every other check still refuses
#   LORETTA_HOSTLIST=auto|scontrol|python   who expands the node list (default auto:
#                  `scontrol show hostnames` when a SLURM config is reachable, else python)
#
# Preemption: on SIGUSR1 or SIGTERM this script sends SIGUSR1 to the srun step (srun passes it
# on to every task; srun itself turns a SIGTERM into SIGKILL for its tasks, hence USR1 for
# both). The trainer finishes its step, checkpoints and exits 75. Exit 75, or any failure after
# a signal, requeues the job (`scontrol requeue`); the next start resumes with --resume auto.
set -euo pipefail

readonly EXIT_PREEMPTED=75
readonly EXIT_BAD_INPUT=2
# `loretta-ds plan --check batch`'s exit status when the batch does not divide over the processes
# (the nodes or the batch are the cause; any other problem exits EXIT_BAD_INPUT).
readonly EXIT_BATCH_SPLIT=3
# The DS_CONFIG value that lets the trainer choose the layout (the trainer's --ds_config auto).
readonly AUTO_LAYOUT=auto

log() { printf '[launch] %s\n' "$*"; }
err() { printf '[launch] ERROR: %s\n' "$*" >&2; }
warn() { printf '[launch] WARNING: %s\n' "$*" >&2; }

HELPER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="${LORETTA_ROOT:-$(cd "$(dirname "$HELPER")/.." && pwd)}"
PYTHON="${PYTHON:-python3}"

# --- task mode: runs once per process, inside srun ------------------------------------------
task_main() {
    ((${#@} > 0)) || { err "task mode needs the trainer command"; exit "$EXIT_BAD_INPUT"; }
    : "${SLURM_PROCID:?task mode runs under srun (SLURM_PROCID unset)}"
    : "${SLURM_LOCALID:?task mode runs under srun (SLURM_LOCALID unset)}"
    : "${WORLD_SIZE:?WORLD_SIZE not exported by _launch.sh run}"
    if [[ -n ${SLURM_NTASKS:-} && $SLURM_NTASKS != "$WORLD_SIZE" ]]; then
        err "srun started $SLURM_NTASKS tasks but WORLD_SIZE=$WORLD_SIZE"
        exit "$EXIT_BAD_INPUT"
    fi
    export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" NODE_RANK="${SLURM_NODEID:-0}"
    exec "$@"
}

# --- node list ------------------------------------------------------------------------------
# SLURM clients need a config (a missing SLURM_CONF file makes them retry for a minute);
# inside a job a configless setup also works.
slurm_config_reachable() {
    if [[ -n ${SLURM_CONF:-} ]]; then
        [[ -f $SLURM_CONF ]]
    else
        [[ -f /etc/slurm/slurm.conf || -n ${SLURM_JOB_ID:-} ]]
    fi
}

expand_with_python() {
    "$PYTHON" - "$1" <<'PY'
import re
import sys


def split_top(text):
    """Split on commas that are not inside [...]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError("unbalanced '['")
    parts.append(cur)
    return [p for p in parts if p]


def expand_range(body):
    out = []
    for item in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"bad range {item!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r}")
        width = len(lo)
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def expand(name):
    m = re.search(r"\[([^\]]*)\]", name)
    if not m:
        return [name]
    head, tail = name[: m.start()], name[m.end():]
    return [head + n + rest for n in expand_range(m.group(1)) for rest in expand(tail)]


try:
    hosts = [h for part in split_top(sys.argv[1].strip()) for h in expand(part)]
except ValueError as e:
    sys.exit(f"cannot expand node list {sys.argv[1]!r}: {e}")
print("\n".join(hosts))
PY
}

# expand_nodelist LIST: sets HOSTS (one entry per host) and HOSTLIST_TOOL
expand_nodelist() {
    local list=$1 mode="${LORETTA_HOSTLIST:-auto}" out=""
    HOSTS=()
    HOSTLIST_TOOL=""
    case "$mode" in
        auto | scontrol | python) ;;
        *)
            err "LORETTA_HOSTLIST=$mode: use auto, scontrol or python"
            return 1
            ;;
    esac
    local try_scontrol=0
    if [[ $mode == scontrol ]]; then
        try_scontrol=1
    elif [[ $mode == auto ]] && command -v scontrol >/dev/null && slurm_config_reachable; then
        try_scontrol=1
    fi
    if ((try_scontrol)); then
        if out="$(timeout 20 scontrol show hostnames "$list" 2>/dev/null)" && [[ -n $out ]]; then
            HOSTLIST_TOOL=scontrol
        elif [[ $mode == scontrol ]]; then
            err "scontrol show hostnames '$list' failed (is SLURM_CONF set to a readable config?)"
            return 1
        fi
    fi
    if [[ -z $HOSTLIST_TOOL ]]; then
        out="$(expand_with_python "$list")" || return 1
        HOSTLIST_TOOL=python
    fi
    mapfile -t HOSTS <<<"$out"
}

# --- validation -----------------------------------------------------------------------------
looks_like_path() {
    case "$1" in
        /* | ./* | ../* | "~"/* | . | ..) return 0 ;;
        *) return 1 ;;
    esac
}

abspath() {  # abspath PATH: absolute, normalised form (the file may not exist)
    case "$1" in
        "~"/*) realpath -m -- "$HOME/${1#"~/"}" ;;
        *) realpath -m -- "$1" ;;
    esac
}

# DATA holds one or more dataset specs, SOURCE[:WEIGHT], separated by commas and/or whitespace
# ("a.jsonl:0.7,b.jsonl:0.3" or "a.jsonl:0.7 b.jsonl:0.3"). Each becomes its own word after
# --dataset (the trainer's list); a SOURCE that looks like a path is made absolute and must exist.
# Sets DATA_SPECS; problems go to `errors` (run_main's).
split_data_specs() {
    local words=() word source weight reason
    if ! reason="$(split_words "$1" , 2>&1 >/dev/null)"; then
        errors+=("DATA='$1' cannot be split into dataset specs ($reason). Close the quote; quote a path with spaces or commas: DATA='\"/data/my set.jsonl\":0.7,b.jsonl:0.3'.")
        return 0
    fi
    mapfile -d '' -t words < <(split_words "$1" ,)
    for word in "${words[@]}"; do
        [[ -n $word ]] || continue
        source=$word weight=""
        if [[ $word =~ ^(.+)(:[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)$ ]]; then
            source=${BASH_REMATCH[1]} weight=${BASH_REMATCH[2]}
        fi
        if looks_like_path "$source"; then
            source="$(abspath "$source")"
            [[ -e $source ]] || missing+=("DATA=$source (from '$word') does not exist. Set DATA to existing dataset files or directories, or dataset names, each optionally NAME:WEIGHT, separated by commas or spaces.")
        fi
        DATA_SPECS+=("$source$weight")
    done
    ((${#DATA_SPECS[@]} > 0)) || errors+=("DATA='$1' holds no dataset spec. Set DATA to a dataset name or file (several: a.jsonl:0.7,b.jsonl:0.3).")
}

# Python's shlex splits as a shell does (quotes and backslashes group), without running anything.
readonly WORD_SPLITTER='import shlex, sys
lexer = shlex.shlex(sys.argv[1], posix=True)
lexer.whitespace_split, lexer.commenters = True, ""
lexer.whitespace += sys.argv[2]
try:
    words = list(lexer)
except ValueError as err:
    sys.exit(str(err))
sys.stdout.write("".join(word + "\0" for word in words))'

# split_words TEXT [MORE_SEPARATORS]: TEXT's words, each ended by a NUL (read them with mapfile -d '');
# fails with the reason on stderr (an unclosed quote).
split_words() {
    "$PYTHON" -c "$WORD_SPLITTER" "$1" "${2:-}"
}

quote_cmd() {  # quote_cmd WORD...: one line that a shell reads back as the same words
    local out
    printf -v out '%q ' "$@"
    printf '%s' "${out% }"
}

# batch_check WORLD EXTRA_ARG...: the batch split of DS_CONFIG over WORLD processes, by the
# trainer's own rule (`loretta-ds plan --check batch`: the config's numbers and the batch flags,
# no model or data needed). Prints the split, or the trainer's message and fails.
batch_check() {
    local world=$1
    shift
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m loretta_ds.cli plan --check batch \
        --world_size "$world" --ds_config "$DS_CONFIG" "$@" 2>&1 | sed 's/^error: //'
    return "${PIPESTATUS[0]}"
}

# --- run mode -------------------------------------------------------------------------------
SRUN_PID=""
SIGNALS_SEEN=0
SIGNAL_NAME=""

on_signal() {
    SIGNALS_SEEN=$((SIGNALS_SEEN + 1))
    SIGNAL_NAME=$1
    if [[ -n $SRUN_PID ]] && kill -0 "$SRUN_PID" 2>/dev/null; then
        log "got SIG$1: asking the trainer to checkpoint and stop (SIGUSR1 to srun $SRUN_PID)"
        kill -USR1 "$SRUN_PID" 2>/dev/null || true
    else
        log "got SIG$1 before the trainer started"
    fi
}

requeue_and_exit() {
    log "requeueing job $SLURM_JOB_ID; the next start resumes with --resume auto"
    if scontrol requeue "$SLURM_JOB_ID"; then
        log "requeued"
        exit 0
    fi
    err "scontrol requeue $SLURM_JOB_ID failed; resubmit the same script by hand:" \
        "it resumes from $OUTPUT_DIR"
    exit "$EXIT_PREEMPTED"
}

run_main() {
    local dry_run=0 plan_only=0
    [[ ${DRY_RUN:-0} =~ ^(1|yes|true)$ ]] && dry_run=1
    [[ ${DRY_RUN:-0} == plan ]] && dry_run=1 plan_only=1
    local errors=() warnings=()

    : "${METHOD:=rep}"
    : "${GPUS_PER_NODE:=${SLURM_NTASKS_PER_NODE:-8}}"
    : "${EXTRA_ARGS:=}"
    [[ -n ${MODEL:-} ]] || errors+=("MODEL is not set. Set MODEL to a HF model directory, e.g. MODEL=/models/Llama-2-7b-hf sbatch ...")
    [[ -n ${DATA:-} ]] || errors+=("DATA is not set. Set DATA to a dataset name or file.")
    [[ -n ${OUTPUT_DIR:-} ]] || errors+=("OUTPUT_DIR is not set. Set OUTPUT_DIR to a directory on a shared file system.")
    [[ -n ${DS_CONFIG:-} ]] || errors+=("DS_CONFIG is not set. Set DS_CONFIG to auto (the fastest layout that fits) or to a DeepSpeed JSON such as ds_configs/zero3_offload.json.")
    if ! [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]]; then
        errors+=("GPUS_PER_NODE='$GPUS_PER_NODE' is not a positive whole number. Set it to the GPUs per node (one process each).")
    fi

    # A path missing here refuses the job (and DRY_RUN=1, the check before sbatch); DRY_RUN=plan
    # only warns, since the machine printing the plan need not see the cluster's file systems.
    local missing=()
    if [[ -n ${MODEL:-} ]] && looks_like_path "$MODEL"; then
        MODEL="$(abspath "$MODEL")"
        [[ -e $MODEL ]] || missing+=("MODEL=$MODEL does not exist. Set MODEL to a local HF checkpoint directory (config.json + weights) that every node can read.")
    fi
    DATA_SPECS=()
    [[ -n ${DATA:-} ]] && split_data_specs "$DATA"  # its missing paths go into `missing`
    if ((${#missing[@]} > 0)); then
        if ((plan_only)); then
            local m
            for m in "${missing[@]}"; do warnings+=("${m/ does not exist. / does not exist on this machine; the job needs it on every node. }"); done
        elif ((dry_run)); then
            local m
            for m in "${missing[@]}"; do errors+=("$m (DRY_RUN=plan prints the plan on a machine without it.)"); done
        else
            errors+=("${missing[@]}")
        fi
    fi
    [[ -n ${OUTPUT_DIR:-} ]] && OUTPUT_DIR="$(abspath "$OUTPUT_DIR")"

    if [[ -n ${DS_CONFIG:-} ]]; then
        if [[ $DS_CONFIG == "$AUTO_LAYOUT" ]]; then
            :  # the trainer chooses; the batch check below still applies the trainer's rule
        elif [[ -f $DS_CONFIG ]]; then
            DS_CONFIG="$(abspath "$DS_CONFIG")"
        elif [[ $DS_CONFIG != /* && -f $ROOT/$DS_CONFIG ]]; then
            DS_CONFIG="$ROOT/$DS_CONFIG"
        else
            local known
            known="$(cd "$ROOT" && find ds_configs/ -maxdepth 1 -name '*.json' 2>/dev/null | sort | tr '\n' ' ')"
            errors+=("DS_CONFIG=$DS_CONFIG not found (looked in $PWD and $ROOT). Set DS_CONFIG to $AUTO_LAYOUT (the fastest layout that fits) or to an existing DeepSpeed JSON${known:+; available: ${known% }}.")
            DS_CONFIG=""
        fi
    fi

    # Node list: the allocation's, or in a dry run any list given (default: this host).
    local nodelist="${SLURM_JOB_NODELIST:-}"
    if [[ -z $nodelist ]]; then
        if ((dry_run)); then
            # The sbatch scripts say how many nodes they ask for: invent that many names.
            local want="${LORETTA_DRY_RUN_NODES:-1}"
            if [[ $want =~ ^[0-9]+$ ]] && ((want > 1)); then
                nodelist="node[1-$want]"
            else
                nodelist="$(hostname -s)"
            fi
        else
            errors+=("not inside a SLURM allocation (SLURM_JOB_NODELIST unset). Submit with sbatch, or set DRY_RUN=1 to print the plan.")
        fi
    fi
    HOSTS=()
    if [[ -n $nodelist ]] && ! expand_nodelist "$nodelist"; then
        errors+=("cannot expand the node list '$nodelist'.")
    fi
    local nodes=${#HOSTS[@]}
    if [[ -n ${SLURM_JOB_NUM_NODES:-} && $nodes -gt 0 && $SLURM_JOB_NUM_NODES != "$nodes" ]]; then
        errors+=("the node list '$nodelist' has $nodes hosts but SLURM_JOB_NUM_NODES=$SLURM_JOB_NUM_NODES.")
    fi
    if [[ -n ${SLURM_NTASKS_PER_NODE:-} && $SLURM_NTASKS_PER_NODE =~ ^[0-9]+$ \
        && $GPUS_PER_NODE =~ ^[0-9]+$ && $GPUS_PER_NODE -gt $SLURM_NTASKS_PER_NODE ]]; then
        errors+=("GPUS_PER_NODE=$GPUS_PER_NODE but the job has only --ntasks-per-node=$SLURM_NTASKS_PER_NODE. Submit with --ntasks-per-node=$GPUS_PER_NODE (and --gpus-per-node) or lower GPUS_PER_NODE.")
    fi

    local world=0 batch_msg="" extra=() reason extra_ok=1
    if reason="$(split_words "$EXTRA_ARGS" 2>&1 >/dev/null)"; then
        mapfile -d '' -t extra < <(split_words "$EXTRA_ARGS")
    else
        extra_ok=0
        errors+=("EXTRA_ARGS cannot be split into arguments ($reason). Close the quote; quote a value with spaces: EXTRA_ARGS='--chat_template \"/data/my templates/t.jinja\"'.")
    fi
    if ((nodes > 0 && extra_ok)) && [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]]; then
        world=$((nodes * GPUS_PER_NODE))
        if [[ -n ${DS_CONFIG:-} ]]; then
            local status=0
            batch_msg="$(batch_check "$world" "${extra[@]}")" || status=$?
            if ((status == EXIT_BATCH_SPLIT)); then
                # Only here are the nodes (or the batch) the cause: say both ways out.
                local fix="change the batch in $DS_CONFIG"
                [[ $DS_CONFIG == "$AUTO_LAYOUT" ]] && fix="pass other batch flags in EXTRA_ARGS"
                errors+=("$batch_msg. This job starts $world processes ($nodes nodes x GPUS_PER_NODE=$GPUS_PER_NODE): submit with another --nodes or GPUS_PER_NODE, or $fix.")
                batch_msg=""
            elif ((status != 0)); then
                errors+=("$batch_msg (the batch check of DS_CONFIG=$DS_CONFIG with the flags in EXTRA_ARGS).")
                batch_msg=""
            fi
        fi
    fi

    local trainer="$ROOT/launch/train.py"
    if ((!dry_run)) && [[ ! -f $trainer ]]; then
        errors+=("trainer $trainer not found. Set LORETTA_ROOT to the loretta_ds checkout (submit from its root).")
    fi
    if ((!dry_run)) && [[ -n ${SLURM_RESTART_COUNT:-} ]] \
        && ((SLURM_RESTART_COUNT > ${MAX_REQUEUES:-50})); then
        errors+=("job restarted $SLURM_RESTART_COUNT times (MAX_REQUEUES=${MAX_REQUEUES:-50}); giving up. Check $OUTPUT_DIR and the log above, then resubmit.")
    fi

    if ((${#errors[@]} > 0)); then
        local e
        for e in "${errors[@]}"; do err "$e"; done
        err "nothing was started (${#errors[@]} problem(s) above)"
        exit "$EXIT_BAD_INPUT"
    fi

    local master_addr=${HOSTS[0]}
    local master_port=${MASTER_PORT:-}
    if [[ -z $master_port ]]; then
        if [[ -n ${SLURM_JOB_ID:-} ]]; then
            master_port=$((20000 + SLURM_JOB_ID % 20000))
        else
            master_port=29500
        fi
    fi

    local cmd=("$PYTHON" "$trainer" --ds_config "$DS_CONFIG" --model "$MODEL" --dataset "${DATA_SPECS[@]}"
        --method "$METHOD" --output_dir "$OUTPUT_DIR" --resume auto "${extra[@]}")
    local srun_cmd=(srun --nodes="$nodes" --ntasks="$world" --ntasks-per-node="$GPUS_PER_NODE"
        --distribution=block --kill-on-bad-exit=0 --export=ALL)
    [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && srun_cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    srun_cmd+=(bash "$HELPER" task "${cmd[@]}")

    export MASTER_ADDR="$master_addr" MASTER_PORT="$master_port" WORLD_SIZE="$world"
    export LOCAL_WORLD_SIZE="$GPUS_PER_NODE"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"

    if ((plan_only)); then
        log "DRY_RUN=plan: printing the plan, starting nothing (paths not checked on this machine)"
    elif ((dry_run)); then
        log "DRY_RUN=1: printing the plan, starting nothing"
    fi
    log "job: ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0}"
    log "node list: $nodelist -> ${HOSTS[*]} ($nodes node(s), expanded with $HOSTLIST_TOOL)"
    log "master: MASTER_ADDR=$master_addr MASTER_PORT=$master_port"
    log "world size: WORLD_SIZE=$world ($nodes node(s) x GPUS_PER_NODE=$GPUS_PER_NODE)"
    log "batch: $batch_msg"
    log "srun: $(quote_cmd "${srun_cmd[@]}")"

    if ((dry_run)); then
        local n r local_rank
        for ((n = 0; n < nodes; n++)); do
            log "node ${HOSTS[n]} (node rank $n): cd $(quote_cmd "$PWD") && $(quote_cmd "${cmd[@]}")"
            for ((local_rank = 0; local_rank < GPUS_PER_NODE; local_rank++)); do
                r=$((n * GPUS_PER_NODE + local_rank))
                log "  rank $r on ${HOSTS[n]}: RANK=$r LOCAL_RANK=$local_rank WORLD_SIZE=$world MASTER_ADDR=$master_addr MASTER_PORT=$master_port"
            done
        done
        local w
        for w in "${warnings[@]}"; do warn "$w"; done  # last, where the eye lands
        exit 0
    fi

    mkdir -p "$OUTPUT_DIR"
    trap 'on_signal USR1' USR1
    trap 'on_signal TERM' TERM
    if ((SIGNALS_SEEN > 0)); then
        requeue_and_exit
    fi

    "${srun_cmd[@]}" &
    SRUN_PID=$!
    # A signal that arrived between the trap and here has not reached the trainer yet.
    ((SIGNALS_SEEN > 0)) && on_signal "$SIGNAL_NAME"

    local rc seen
    while :; do
        seen=$SIGNALS_SEEN
        set +e
        wait "$SRUN_PID"
        rc=$?
        set -e
        # A trapped signal interrupts `wait` (status > 128) while srun runs on: wait again.
        ((SIGNALS_SEEN != seen && rc > 128)) && continue
        break
    done
    SRUN_PID=""

    if ((rc == 0)); then
        log "trainer finished (exit 0); adapter and merged export in $OUTPUT_DIR"
        exit 0
    fi
    if ((rc == EXIT_PREEMPTED)); then
        log "trainer exited $EXIT_PREEMPTED (preempted, checkpoint written)"
        requeue_and_exit
    fi
    if ((SIGNALS_SEEN > 0)); then
        log "trainer exited $rc after SIG$SIGNAL_NAME; resuming from its last checkpoint"
        requeue_and_exit
    fi
    err "trainer failed with exit code $rc; see the log above. Not requeued."
    exit "$rc"
}

case "${1:-}" in
    run) run_main ;;
    task)
        shift
        task_main "$@"
        ;;
    *)
        printf 'usage: %s run | task CMD...\n' "$0" >&2
        exit "$EXIT_BAD_INPUT"
        ;;
esac
