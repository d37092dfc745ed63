#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on localhost, for the SLURM integration tests
# (tests/test_slurm.py) and for trying `edit-run -m hydra/launcher=slurm ...` on one machine.
#
#   scripts/slurm_local.sh start    install slurm-wlm + munge (Debian/Ubuntu, apt) if missing, write
#                                   /etc/slurm/slurm.conf + cgroup.conf for this machine (real CPU count
#                                   and memory from `slurmd -C`), start munged, slurmctld, slurmd and
#                                   wait until `sinfo` shows the node idle.  A no-op when already up.
#   scripts/slurm_local.sh stop     cancel every job, stop the daemons, remove the state, logs and
#                                   the config files this script wrote.  A no-op when nothing runs.
#   scripts/slurm_local.sh status   print the daemons and `sinfo`; exit 0 iff the node is usable.
#   scripts/slurm_local.sh logs     tail the daemons' logs (debugging).
#
# Needs root (or password-less sudo).  Cluster: one partition `debug` (default) with one node named
# after `hostname -s`, addressed on 127.0.0.1; no accounting (sacct does not work; submitit copes).
# Requeued jobs restart after ~10 s (AuthInfo cred_expire) instead of slurm's default 120 s.
# Everything the daemons write lives under $SLURM_LOCAL_ROOT (default /var/lib/slurm-local).
# Tested with Debian 12's slurm-wlm 22.05 (also inside gVisor): ProctrackType=proctrack/linuxproc and
# TaskPlugin=task/none, so no cgroup setup is needed.
set -euo pipefail

ROOT_DIR=${SLURM_LOCAL_ROOT:-/var/lib/slurm-local}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CGROUP_CONF=$CONF_DIR/cgroup.conf
MARK="# written by edit-runner scripts/slurm_local.sh"
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
START_TIMEOUT_S=${SLURM_LOCAL_START_TIMEOUT_S:-90}
PACKAGES=(slurm-wlm munge)

log() { echo "[slurm_local] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n -E bash "$0" "$@"
    fi
    die "must run as root (or with password-less sudo)"
fi

NODE=$(hostname -s)

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is missing"
    log "installing ${PACKAGES[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    # try without refreshing the lists first (fast when they are current), then refresh
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    fi
}

munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return 0; fi
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    rm -f /run/munge/munged.pid
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    touch "$ROOT_DIR/munged.ours"
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

write_conf() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: refusing to touch a real cluster's config"
    fi
    # this machine's real CPU layout and memory, as slurmd itself sees them
    local hw cpus mem
    hw=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //')
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot parse 'slurmd -C': $hw"
    mkdir -p "$CONF_DIR"
    cat >"$CONF.tmp" <<EOF
$MARK -- a single-node test cluster on localhost.
ClusterName=editrunner
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (slurm default: 120)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT_DIR/slurmctld
SlurmdSpoolDir=$ROOT_DIR/slurmd
SlurmctldPidFile=$ROOT_DIR/slurmctld.pid
SlurmdPidFile=$ROOT_DIR/slurmd.pid
SlurmctldLogFile=$ROOT_DIR/log/slurmctld.log
SlurmdLogFile=$ROOT_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
# start pending (e.g. requeued) jobs within seconds, not the default 30-60 s
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
# seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (slurm default 30)
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    cat >"$CGROUP_CONF" <<EOF
$MARK -- cgroups are not used (proctrack/linuxproc, task/none)
CgroupPlugin=autodetect
IgnoreSystemd=yes
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
    log "wrote $CONF (node $NODE: $hw)"
}

# a live (not zombie) process whose pid is in file $1
pid_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

node_state() { timeout 10 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

do_start() {
    if [ -e "$CONF" ] && grep -qF "$MARK" "$CONF" && munge_ok \
        && pid_alive "$ROOT_DIR/slurmctld.pid" && pid_alive "$ROOT_DIR/slurmd.pid" && node_usable; then
        log "already running: node $NODE is $(node_state)"
        return 0
    fi
    local t0=$SECONDS
    install_packages
    # a half-started or crashed cluster: start over from a clean state
    stop_daemons
    mkdir -p "$ROOT_DIR/slurmctld" "$ROOT_DIR/slurmd" "$ROOT_DIR/log"
    chmod 0755 "$ROOT_DIR"
    start_munge
    write_conf
    log "starting slurmctld and slurmd"
    slurmctld -c
    slurmd -c
    local deadline=$((SECONDS + START_TIMEOUT_S)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(node_state || true)
        case "$state" in
            idle) break ;;
            down* | drain* | fail* | inval*)
                # the node registered before the controller was ready: resume it
                scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    if [ "$state" != idle ]; then
        do_logs >&2 || true
        die "node $NODE is not idle after ${START_TIMEOUT_S}s (state: '${state:-no answer}')"
    fi
    log "cluster up in $((SECONDS - t0))s: partition $PARTITION, node $NODE idle"
    sinfo >&2
}

stop_daemons() {
    # cancel every job of this (test-only) cluster so that no step keeps running
    if [ -e "$CONF" ] && grep -qF "$MARK" "$CONF" && pid_alive "$ROOT_DIR/slurmctld.pid"; then
        local jobs
        jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            log "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 40); do
                [ -z "$(timeout 10 squeue -h -o '%A' 2>/dev/null || true)" ] && break
                sleep 0.5
            done
        fi
        timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    fi
    local name pidf
    for name in slurmctld slurmd; do
        pidf=$ROOT_DIR/$name.pid
        if pid_alive "$pidf"; then
            kill "$(cat "$pidf")" 2>/dev/null || true
            for _ in $(seq 50); do pid_alive "$pidf" || break; sleep 0.2; done
            pid_alive "$pidf" && kill -9 "$(cat "$pidf")" 2>/dev/null || true
        fi
        rm -f "$pidf"
    done
    # job steps that survived their slurmd (slurmstepd runs detached from it)
    local p
    for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
        kill -9 "$p" 2>/dev/null || true
    done
}

do_stop() {
    stop_daemons
    if [ -e "$ROOT_DIR/munged.ours" ] && [ -s /run/munge/munged.pid ]; then
        log "stopping munged"
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$(cat /run/munge/munged.pid 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
    fi
    for f in "$CONF" "$CGROUP_CONF"; do
        if [ -e "$f" ] && grep -qF "$MARK" "$f"; then rm -f "$f"; fi
    done
    rm -rf "$ROOT_DIR"
    log "stopped and cleaned"
}

do_status() {
    local rc=0
    for name in slurmctld slurmd; do
        if pid_alive "$ROOT_DIR/$name.pid"; then echo "$name: running (pid $(cat "$ROOT_DIR/$name.pid"))"
        else echo "$name: not running"; rc=1; fi
    done
    if munge_ok; then echo "munged: running"; else echo "munged: not running"; rc=1; fi
    timeout 10 sinfo 2>&1 || rc=1
    node_usable || rc=1
    return $rc
}

do_logs() {
    local f
    for f in "$ROOT_DIR"/log/*.log; do
        [ -e "$f" ] || continue
        echo "==> $f <=="
        tail -n "${1:-40}" "$f"
    done
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    restart) do_stop; do_start ;;
    status) do_status ;;
    logs) do_logs "${2:-40}" ;;
    *) echo "usage: $0 start|stop|restart|status|logs [N]" >&2; exit 2 ;;
esac
