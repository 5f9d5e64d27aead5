#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by tests/slurm/start-cluster.sh: cancel its jobs and
# stop slurmd and slurmctld (munged stays: other programs on the host may use it).
set -uo pipefail
quiet=false; [ "${1:-}" = "--quiet" ] && quiet=true
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
if command -v scancel >/dev/null && pgrep -x slurmctld >/dev/null; then
    $SUDO scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
fi
for daemon in slurmd slurmctld; do
    if pgrep -x "$daemon" >/dev/null; then
        $SUDO pkill -TERM -x "$daemon"
        for _ in $(seq 50); do pgrep -x "$daemon" >/dev/null || break; sleep 0.2; done
        pgrep -x "$daemon" >/dev/null && $SUDO pkill -KILL -x "$daemon"
        $quiet || echo "stop-cluster: stopped $daemon" >&2
    fi
done
exit 0
