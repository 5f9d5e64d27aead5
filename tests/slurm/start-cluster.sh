#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine for rib's SLURM tests (and for trying
# `snakemake --profile profiles/slurm` by hand): install Debian's slurm-wlm and munge when they are
# missing, write /etc/slurm/slurm.conf for this host, start munged, slurmctld and slurmd, and wait
# until the node is idle. Stop it with tests/slurm/stop-cluster.sh.
#
# Needs root (or password-less sudo) and Debian/Ubuntu packages. Exits non-zero with one line on
# stderr saying why when the cluster cannot be started; the tests then skip with that reason.
set -euo pipefail

STATE=${RIB_SLURM_STATE:-/var/tmp/rib-slurm}   # spool, state and logs of this test cluster
TIMEOUT=${RIB_SLURM_TIMEOUT:-60}               # seconds to wait for the node to become idle

die() { echo "start-cluster: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || die "needs root or password-less sudo"
    SUDO="sudo -n"
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and apt-get is not available"
    echo "start-cluster: installing slurm-wlm and munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; then
        $SUDO apt-get update -q >/dev/null 2>&1 || true
        $SUDO apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || die "apt-get install slurm-wlm munge failed"
    fi
fi

# Never replace the configuration of a real cluster: only one this script wrote.
MARK="# Written by rib's tests/slurm/start-cluster.sh"
if [ -s /etc/slurm/slurm.conf ] && ! grep -qF "$MARK" /etc/slurm/slurm.conf && [ -z "${RIB_SLURM_FORCE:-}" ]; then
    die "/etc/slurm/slurm.conf exists and was not written by this script; not touching it (RIB_SLURM_FORCE=1 to replace it)"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
# Advertise 90% of the memory so that slurmd accepts the node (it checks RealMemory against the host).
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

$SUDO mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$STATE/log"

# munge: one key for this host, then the daemon.
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then
        $SUDO mungekey --create --force >/dev/null 2>&1 || $SUDO mungekey -c -f
    else
        $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
$SUDO chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
$SUDO chmod 0400 /etc/munge/munge.key
$SUDO mkdir -p /run/munge && $SUDO chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
    $SUDO -u munge /usr/sbin/munged 2>/dev/null || $SUDO runuser -u munge -- /usr/sbin/munged \
        || die "munged did not start"
fi
munge -n | unmunge >/dev/null 2>&1 || die "munge does not work (munge -n | unmunge failed)"

# slurm.conf: one node (this host), one default partition, no accounting database (so Snakemake's
# executor is told to ask squeue for job states), jobs requeue-able, 30 s between SIGTERM and
# SIGKILL when a job is cancelled, preempted or requeued, finished jobs visible for 10 minutes.
$SUDO tee /etc/slurm/slurm.conf >/dev/null <<CONF
$MARK for a single-node test cluster.
ClusterName=rib
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=30
# Requeued jobs may start again after 5 s rather than the default 120 s (a test cluster).
AuthInfo=cred_expire=5
MinJobAge=600
SchedulerParameters=sched_interval=2
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
# Processes are tracked without cgroups (proctrack/linuxproc, task/none): containers often lack them.
$SUDO rm -f /etc/slurm/cgroup.conf

# A running cluster from an earlier call is restarted so that it reads this configuration.
"$(dirname "$0")/stop-cluster.sh" --quiet || true
$SUDO /usr/sbin/slurmctld -i 2>"$STATE/log/slurmctld.start" || die "slurmctld did not start: $(tail -qn1 "$STATE"/log/slurmctld.{start,log} 2>/dev/null | tail -1)"
$SUDO /usr/sbin/slurmd 2>"$STATE/log/slurmd.start" || die "slurmd did not start: $(tail -qn1 "$STATE"/log/slurmd.{start,log} 2>/dev/null | tail -1)"

deadline=$((SECONDS + TIMEOUT))
until state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) && [ "$state" = idle ]; do
    if [ $SECONDS -ge $deadline ]; then
        die "node $HOST is '${state:-unknown}', not idle, after ${TIMEOUT}s (logs: $STATE/log)"
    fi
    case "$state" in down*|drain*) $SUDO scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;; esac
    sleep 1
done
echo "start-cluster: SLURM is up: node $HOST idle, $CPUS CPUs, $MEM_MB MB, partition main" >&2
