#!/usr/bin/env bash
# slurm-down.sh — stop the Slurm started by slurm-up.sh (by pid file). No error if not running.
#   --purge  also delete saved controller state, spool and logs
set -uo pipefail
LOG_TAG=slurm-down
. "$(dirname "$(readlink -f "$0")")/lib.sh"
need_root
rm -f /run/slurm/shoal-ci-ok
stop_pidfiles 15 /run/slurm/slurmd.pid /run/slurm/slurmctld.pid
stop_pidfile /run/munge/munged.pid 10 munged
if [ "${1:-}" = --purge ]; then
  rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* /var/log/slurm/*
  log "purged Slurm state and logs"
fi
exit 0
