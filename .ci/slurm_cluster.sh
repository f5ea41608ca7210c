#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the tests marked `slurm`: two nodes, each in its own
# network namespace, or one node on loopback where namespaces cannot be created.
#
#   .ci/slurm_cluster.sh start    install slurm-wlm + munge if missing, create the nodes' network,
#                                 write the config, start munged, slurmctld and one slurmd per
#                                 node; wait until every node is idle
#   .ci/slurm_cluster.sh stop     cancel jobs, stop the daemons, remove the namespaces, veths and
#                                 bridge, and the cluster directory
#   .ci/slurm_cluster.sh status   daemons, nodes and `sinfo`
#   .ci/slurm_cluster.sh env      print the `export SLURM_CONF=... LORETTA_SLURM_NODES=N` line
#
# Two nodes (LORETTA_SLURM_NODES=2; the default `auto` falls back to one node, saying why, where
# the kernel refuses namespaces or veths):
#   - a bridge in the machine's own network namespace holding $SUBNET.1, the controller's address;
#   - node1 and node2, each a network namespace with a veth into the bridge ($SUBNET.11, .12), its
#     own hostname (a UTS namespace) and its own /etc/hosts naming the controller and both nodes
#     (bind-mounted in the node's mount namespace: nothing is written under /etc);
#   - one slurmd per node inside its namespaces; munged and slurmctld shared, outside them.
# A job's batch script, its srun steps and the trainer ranks run inside their node's namespaces,
# so node1's ranks reach node2's only over the veths and the bridge, as on two machines; the file
# system is shared, as a cluster's NFS is. Nothing beyond loopback and $SUBNET is contacted.
# Both nodes share this machine's CPUs and memory, and each is configured with all of it (slurmd
# drains a node that has less than its configuration says).
#
# Everything else (config, munge key and socket, state, spool, logs) lives under one directory,
# LORETTA_SLURM_DIR (default /tmp/loretta_slurm). The Debian binaries read /etc/slurm/slurm.conf
# by default; the environment variable SLURM_CONF points clients and daemons at ours instead, so
# every command that talks to this cluster needs
#   export SLURM_CONF=/tmp/loretta_slurm/etc/slurm.conf
# Jobs inherit it (sbatch exports the submitting environment). Both start and stop are safe to
# call twice. Two clusters can run side by side with their own LORETTA_SLURM_DIR, ports
# (LORETTA_SLURMCTLD_PORT, LORETTA_SLURMD_PORT) and LORETTA_SLURM_SUBNET: namespace, bridge and
# veth names carry the controller port.
set -euo pipefail

BASE="${LORETTA_SLURM_DIR:-/tmp/loretta_slurm}"
CONF="$BASE/etc/slurm.conf"
MUNGE_DIR="$BASE/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
RUN_DIR="$BASE/run"
LOG_DIR="$BASE/log"
# What this cluster is made of (mode, names of namespaces and links), written by start: stop
# removes what start made even when called with other settings.
STATE_FILE="$BASE/cluster.env"
# Why there is one node only, where two were wanted (read by the multi-node tests' skip).
ONE_NODE_REASON_FILE="$BASE/multinode_unavailable"
CTLD_PORT="${LORETTA_SLURMCTLD_PORT:-16817}"
SLURMD_PORT="${LORETTA_SLURMD_PORT:-16818}"
# Seconds a requeued job waits before it may start again; SLURM ties this to the job
# credential lifetime (AuthInfo cred_expire, default 120 s).
CRED_EXPIRE="${LORETTA_SLURM_CRED_EXPIRE:-10}"
START_TIMEOUT="${LORETTA_SLURM_START_TIMEOUT:-90}"
NODES_WANTED="${LORETTA_SLURM_NODES:-auto}"
# The private /24 of the two-node network: .1 the controller (bridge), .11 node1, .12 node2.
SUBNET="${LORETTA_SLURM_SUBNET:-10.213.77}"
CTL_HOST="$(hostname -s)"

# Filled by choose_names (two nodes) or left as is (one node on loopback).
MODE=1
NODE_NAMES=("$CTL_HOST")
BRIDGE=""
NETNS=()
VETHS=()

export SLURM_CONF="$CONF"

log() { printf '[slurm_cluster] %s\n' "$*"; }
die() { printf '[slurm_cluster] ERROR: %s\n' "$*" >&2; exit 1; }

install_packages() {
    local missing=()
    command -v munged >/dev/null 2>&1 || [[ -x /usr/sbin/munged ]] || missing+=(munge)
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
        || ! command -v sbatch >/dev/null 2>&1; then
        missing+=(slurm-wlm)
    fi
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) -eq 0 ]] || die "need root to install ${missing[*]} (or install them first)"
    log "installing ${missing[*]} with apt"
    local apt_opts=(-y -qq --no-install-recommends -o Dpkg::Use-Pty=0)
    # The package scripts try to start the system services; ours run from $BASE instead.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" \
        >"$BASE/apt.log" 2>&1; then
        # A fresh machine may have no or stale package lists.
        log "apt-get install failed, updating the package lists and retrying"
        apt-get update -qq >>"$BASE/apt.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" \
            >>"$BASE/apt.log" 2>&1 || rc=$?
    fi
    ((added_policy)) && rm -f "$policy"
    ((rc == 0)) || { tail -n 20 "$BASE/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

pid_alive() {  # pid_alive PIDFILE: the process named in PIDFILE is running
    local pid
    [[ -s $1 ]] || return 1
    pid="$(<"$1")"
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# --- the two-node network -------------------------------------------------------------------

choose_names() {  # the two-node layout; names carry the controller port (unique on this machine)
    MODE=2
    NODE_NAMES=(node1 node2)
    BRIDGE="lsb$CTLD_PORT"
    NETNS=("loretta-$CTLD_PORT-node1" "loretta-$CTLD_PORT-node2")
    VETHS=("lsv${CTLD_PORT}n1" "lsv${CTLD_PORT}n2")
}

node_addr() {  # node_addr INDEX (0-based): the node's address
    if ((MODE == 2)); then printf '%s.%d' "$SUBNET" $((11 + $1)); else printf '127.0.0.1'; fi
}

ctl_addr() { if ((MODE == 2)); then printf '%s.1' "$SUBNET"; else printf '127.0.0.1'; fi; }

save_state() {
    {
        printf 'MODE=%q\n' "$MODE"
        printf 'SUBNET=%q\n' "$SUBNET"
        printf 'BRIDGE=%q\n' "$BRIDGE"
        printf 'NODE_NAMES=(%s)\n' "$(printf '%q ' "${NODE_NAMES[@]}")"
        printf 'NETNS=(%s)\n' "$( ((${#NETNS[@]})) && printf '%q ' "${NETNS[@]}")"
        printf 'VETHS=(%s)\n' "$( ((${#VETHS[@]})) && printf '%q ' "${VETHS[@]}")"
    } >"$STATE_FILE"
}

load_state() {
    # shellcheck disable=SC1090  # written by save_state
    [[ -f $STATE_FILE ]] && source "$STATE_FILE"
    return 0
}

subnet_in_use() {  # prints what already uses $SUBNET.0/24 on this machine, if anything
    {
        ip -4 -o addr show 2>/dev/null | awk -v net="$SUBNET." -v br="$BRIDGE" \
            '$2 != br && index($4, net) == 1 {print $2 " holds " $4}'
        # A route that covers the /24 (other than the default route): a real network here.
        ip -4 route list match "$SUBNET.0/24" 2>/dev/null \
            | awk -v br="$BRIDGE" '$1 != "default" && $0 !~ ("dev " br " ") {print "route " $0}'
    } | sed 's/ *$//' | paste -sd ';' - | sed 's/;/; /g'
}

net_up() {  # create bridge, namespaces and veths; on failure say why on stdout and return 1
    local out i ns
    command -v ip >/dev/null 2>&1 || { echo "the ip command (iproute2) is not installed"; return 1; }
    command -v unshare >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1 \
        || { echo "unshare and nsenter (util-linux) are not installed"; return 1; }
    # Each step's error output is the reason given when a step fails.
    run_ip() { out="$("$@" 2>&1)" || { echo "'$*' failed: $out"; return 1; }; }
    run_ip ip link add "$BRIDGE" type bridge || return 1
    run_ip ip addr add "$SUBNET.1/24" dev "$BRIDGE" || return 1
    run_ip ip link set "$BRIDGE" up || return 1
    for i in "${!NETNS[@]}"; do
        ns=${NETNS[i]}
        run_ip ip netns add "$ns" || return 1
        # The node's end is created inside the namespace and named eth0 there, as on a machine.
        run_ip ip link add "${VETHS[i]}" type veth peer name eth0 netns "$ns" || return 1
        run_ip ip link set "${VETHS[i]}" master "$BRIDGE" || return 1
        run_ip ip link set "${VETHS[i]}" up || return 1
        run_ip ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0 || return 1
        run_ip ip -n "$ns" link set eth0 up || return 1
        run_ip ip -n "$ns" link set lo up || return 1
    done
    # A UTS and a mount namespace inside the network namespace: what each slurmd starts in.
    run_ip nsenter --net="/run/netns/${NETNS[0]}" unshare --uts --mount -- true || return 1
    return 0
}

kill_netns_processes() {  # TERM, then KILL, whatever still runs in our namespaces (jobs' ranks)
    local ns pids sig i
    for sig in TERM KILL; do
        for ns in "${NETNS[@]}"; do
            [[ -e /run/netns/$ns ]] || continue
            pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
            # shellcheck disable=SC2086  # one pid per word
            [[ -n ${pids// /} ]] && kill -"$sig" $pids 2>/dev/null || true
        done
        [[ $sig == KILL ]] && break
        for ((i = 0; i < 20; i++)); do
            pids=""
            for ns in "${NETNS[@]}"; do
                [[ -e /run/netns/$ns ]] && pids+="$(ip netns pids "$ns" 2>/dev/null)"
            done
            [[ -z $pids ]] && break
            sleep 0.5
        done
    done
}

net_down() {  # remove what net_up made (each step may have been done or not)
    ((MODE == 2)) || return 0
    local i
    kill_netns_processes
    for i in "${!NETNS[@]}"; do
        ip link del "${VETHS[i]}" >/dev/null 2>&1 || true
        [[ -e /run/netns/${NETNS[i]} ]] && { ip netns del "${NETNS[i]}" >/dev/null 2>&1 || true; }
    done
    [[ -n $BRIDGE ]] && { ip link del "$BRIDGE" >/dev/null 2>&1 || true; }
}

write_hosts() {  # the nodes' /etc/hosts: loopback, the controller, both nodes
    local i
    {
        printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
        printf '%s\t%s\n' "$(ctl_addr)" "$CTL_HOST"
        for i in "${!NODE_NAMES[@]}"; do printf '%s\t%s\n' "$(node_addr "$i")" "${NODE_NAMES[i]}"; done
    } >"$BASE/etc/hosts"
}

# --- config and daemons ---------------------------------------------------------------------

write_config() {
    local cpus mem_mb i
    cpus="$(nproc)"
    # slurmd drains a node that reports less memory than configured: leave some headroom.
    mem_mb="$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')"
    cat >"$CONF" <<EOF
# Generated by .ci/slurm_cluster.sh: $MODE node(s), for tests. Regenerated on every start.
ClusterName=loretta
SlurmctldHost=${CTL_HOST}($(ctl_addr))
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${MUNGE_SOCKET},cred_expire=${CRED_EXPIRE}
StateSaveLocation=${BASE}/state
# One slurmd per node on this machine: each its own spool, pid file and log (%n: node name).
SlurmdSpoolDir=${BASE}/spool/%n
SlurmctldPidFile=${RUN_DIR}/slurmctld.pid
SlurmdPidFile=${RUN_DIR}/slurmd-%n.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups inside a container: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs often, so that a released requeued job starts within seconds.
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
JobRequeue=1
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Keep finished jobs visible to scontrol for 10 minutes (tests read their state).
MinJobAge=600
KillWait=15
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
EOF
    for i in "${!NODE_NAMES[@]}"; do
        printf 'NodeName=%s NodeAddr=%s CPUs=%s RealMemory=%s State=UNKNOWN\n' \
            "${NODE_NAMES[i]}" "$(node_addr "$i")" "$cpus" "$mem_mb" >>"$CONF"
    done
    printf 'PartitionName=debug Nodes=%s Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO\n' \
        "$(IFS=,; echo "${NODE_NAMES[*]}")" >>"$CONF"
}

start_munge() {
    pid_alive "$RUN_DIR/munged.pid" && return 0
    if [[ ! -s $MUNGE_KEY ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force >/dev/null
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chmod 700 "$MUNGE_DIR"
    chmod 400 "$MUNGE_KEY"
    local munged=munged
    command -v munged >/dev/null 2>&1 || munged=/usr/sbin/munged
    # --force: munged dislikes running as root and sockets below a world-writable /tmp.
    "$munged" --force --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET" \
        --pid-file="$RUN_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" 2>>"$LOG_DIR/munged.log" \
        || die "munged did not start; see $LOG_DIR/munged.log"
}

start_slurmd() {  # start_slurmd INDEX
    local i=$1 name=${NODE_NAMES[$1]}
    mkdir -p "$BASE/spool/$name"
    if ((MODE == 1)); then
        slurmd -f "$CONF" -N "$name" || die "slurmd did not start; see $LOG_DIR/slurmd-$name.log"
        return 0
    fi
    # In the node's network namespace, with its own hostname and /etc/hosts (its own mount
    # namespace: the bind mount is seen by this slurmd and the jobs it starts, nobody else).
    # nsenter, not `ip netns exec`: that one mounts a fresh /sys without /sys/fs/cgroup, which
    # slurmd needs even with proctrack/linuxproc.
    # shellcheck disable=SC2016  # expanded by the inner shell
    nsenter --net="/run/netns/${NETNS[i]}" unshare --uts --mount --propagation private -- \
        bash -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec slurmd -f "$3" -N "$2"' \
        slurmd-start "$BASE/etc/hosts" "$name" "$CONF" \
        || die "slurmd for $name did not start; see $LOG_DIR/slurmd-$name.log"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2
    shift 2
    local t=0
    until "$@"; do
        ((t >= limit * 2)) && return 1
        sleep 0.5
        t=$((t + 1))
    done
    log "$what after $((t / 2)) s"
}

ctld_up() { scontrol ping >/dev/null 2>&1; }

nodes_idle() {  # every configured node is idle
    local states
    states="$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u)" || return 1
    local name
    for name in "${NODE_NAMES[@]}"; do
        grep -qx "$name idle" <<<"$states" || return 1
    done
}

running() {
    local name
    pid_alive "$RUN_DIR/munged.pid" && pid_alive "$RUN_DIR/slurmctld.pid" || return 1
    for name in "${NODE_NAMES[@]}"; do pid_alive "$RUN_DIR/slurmd-$name.pid" || return 1; done
    [[ -f $CONF ]] && scontrol ping >/dev/null 2>&1
}

choose_mode() {  # two nodes where wanted and possible; sets MODE and the names
    rm -f "$ONE_NODE_REASON_FILE"
    if [[ $NODES_WANTED == 1 ]]; then
        echo "LORETTA_SLURM_NODES=1 was asked for" >"$ONE_NODE_REASON_FILE"
        return 0
    fi
    choose_names
    # Links and namespaces of ours left by a run that lost its state file: their names are ours.
    net_down
    local why
    why="$(subnet_in_use)"
    if [[ -n $why ]]; then
        die "the private network $SUBNET.0/24 is already in use here ($why); set LORETTA_SLURM_SUBNET to a free 10.x.y"
    fi
    save_state  # before the first link exists: stop can remove a half-made network
    if why="$(net_up)"; then
        return 0
    fi
    net_down
    [[ $NODES_WANTED == 2 ]] && die "cannot create the two nodes' network: $why"
    log "two nodes impossible here ($why); starting one node on loopback"
    echo "network namespaces for a second node cannot be created here: $why" >"$ONE_NODE_REASON_FILE"
    MODE=1 NODE_NAMES=("$CTL_HOST") BRIDGE="" NETNS=() VETHS=()
}

check_settings() {
    case "$NODES_WANTED" in
        1 | 2 | auto) ;;
        *) die "LORETTA_SLURM_NODES=$NODES_WANTED: use 1, 2 or auto" ;;
    esac
    if ! [[ $SUBNET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]]; then
        die "LORETTA_SLURM_SUBNET=$SUBNET is not the first three numbers of an IPv4 /24 (e.g. 10.213.77)"
    fi
}

cmd_start() {
    local t0=$SECONDS i
    check_settings
    load_state
    if [[ -f $STATE_FILE ]] && [[ $NODES_WANTED == auto || $NODES_WANTED == "$MODE" ]] \
        && running && nodes_idle; then
        log "already running, $MODE node(s) (SLURM_CONF=$CONF)"
        return 0
    fi
    mkdir -p "$BASE"
    install_packages
    # A half-started or stale cluster: stop what is left, keep the munge key.
    stop_daemons
    net_down
    MODE=1 NODE_NAMES=("$CTL_HOST") BRIDGE="" NETNS=() VETHS=()
    rm -f "$STATE_FILE"
    mkdir -p "$BASE/etc" "$MUNGE_DIR" "$RUN_DIR" "$LOG_DIR" "$BASE/state" "$BASE/spool"
    choose_mode
    save_state
    write_config
    write_hosts
    start_munge
    wait_for 20 "munge socket ready" test -S "$MUNGE_SOCKET" \
        || die "munged socket missing; see $LOG_DIR/munged.log"
    # -c: start with a clean state (no jobs from an earlier run).
    slurmctld -c -f "$CONF" || die "slurmctld did not start; see $LOG_DIR/slurmctld.log"
    wait_for 30 "slurmctld answering" ctld_up \
        || { tail -n 20 "$LOG_DIR/slurmctld.log" >&2; die "slurmctld not answering"; }
    for i in "${!NODE_NAMES[@]}"; do start_slurmd "$i"; done
    local names="${NODE_NAMES[*]}"
    if ! wait_for "$START_TIMEOUT" "nodes $names idle" nodes_idle; then
        # A node left DOWN/DRAINED by an earlier daemon of ours comes back with a resume.
        scontrol update NodeName="$(IFS=,; echo "${NODE_NAMES[*]}")" State=RESUME >/dev/null 2>&1 || true
        wait_for 15 "nodes $names idle" nodes_idle || {
            sinfo -N -l >&2 || true
            tail -n 20 "$LOG_DIR"/slurmd-*.log "$LOG_DIR/slurmctld.log" >&2 || true
            die "nodes $names did not become idle within ${START_TIMEOUT}s"
        }
    fi
    if ((MODE == 2)); then
        for i in "${!NODE_NAMES[@]}"; do
            log "node ${NODE_NAMES[i]}: $(node_addr "$i") in network namespace ${NETNS[i]}"
        done
        log "controller: $(ctl_addr) on bridge $BRIDGE"
    fi
    log "cluster of $MODE node(s) up in $((SECONDS - t0)) s; use: export SLURM_CONF=$CONF"
}

kill_pidfile() {  # kill_pidfile PIDFILE NAME: TERM, wait up to 10 s, then KILL
    local pidfile=$1 name=$2 pid i
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(<"$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored TERM, killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop_daemons() {
    if pid_alive "$RUN_DIR/slurmctld.pid" && [[ -f $CONF ]]; then
        # Cancel our jobs first so that slurmd takes their processes down with them.
        local jobs
        jobs="$(squeue -h -o '%i' 2>/dev/null || true)"
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086  # one job id per word
            scancel $jobs 2>/dev/null || true
            local i
            for ((i = 0; i < 40; i++)); do
                [[ -z $(squeue -h -t running,completing -o '%i' 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    local pidfile
    # slurmd-NODE.pid, and slurmd.pid of clusters started before the per-node names.
    for pidfile in "$RUN_DIR"/slurmd-*.pid "$RUN_DIR/slurmd.pid"; do
        [[ -e $pidfile ]] && kill_pidfile "$pidfile" "slurmd $(basename "$pidfile" .pid)"
    done
    kill_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
    kill_pidfile "$RUN_DIR/munged.pid" munged
}

cmd_stop() {
    if [[ ! -d $BASE ]]; then
        log "not running"
        return 0
    fi
    load_state
    stop_daemons
    net_down
    rm -rf "$BASE"
    log "stopped and removed $BASE${BRIDGE:+ and the network ($BRIDGE, ${NETNS[*]})}"
}

cmd_status() {
    local name rc=0
    load_state
    for name in munged slurmctld; do
        if pid_alive "$RUN_DIR/$name.pid"; then
            log "$name running (pid $(<"$RUN_DIR/$name.pid"))"
        else
            log "$name not running"
            rc=1
        fi
    done
    for name in "${NODE_NAMES[@]}"; do
        if pid_alive "$RUN_DIR/slurmd-$name.pid"; then
            log "slurmd of $name running (pid $(<"$RUN_DIR/slurmd-$name.pid"))"
        else
            log "slurmd of $name not running"
            rc=1
        fi
    done
    [[ -s $ONE_NODE_REASON_FILE ]] && log "one node: $(<"$ONE_NODE_REASON_FILE")"
    if ((rc == 0)); then
        sinfo -N
        log "SLURM_CONF=$CONF"
    fi
    return "$rc"
}

cmd_env() {
    load_state
    printf 'export SLURM_CONF=%q' "$CONF"
    [[ -f $STATE_FILE ]] && printf ' LORETTA_SLURM_NODES=%q' "${#NODE_NAMES[@]}"
    printf '\n'
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        printf 'usage: %s start|stop|status|env\n' "$0" >&2
        exit 2
        ;;
esac
