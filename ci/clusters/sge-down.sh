#!/usr/bin/env bash
# sge-down.sh — stop the Grid Engine started by sge-up.sh (by pid file). No error if not running.
set -uo pipefail
LOG_TAG=sge-down
. "$(dirname "$(readlink -f "$0")")/lib.sh"
need_root
rm -f /run/gridengine-shoal-ci-ok
for f in /var/spool/gridengine/execd/*/execd.pid; do
  [ -e "$f" ] && stop_pidfile "$f" 15 sge_execd
done
stop_pidfile /var/spool/gridengine/qmaster/qmaster.pid 20 sge_qmaster
exit 0
