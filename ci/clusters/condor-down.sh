#!/usr/bin/env bash
# condor-down.sh — stop the chroot HTCondor pool of condor-up.sh and unmount its binds.
# No error if not running. Only processes whose root is the chroot are signalled, by pid.
#   --purge  also delete the chroot and the host wrappers (only once nothing is mounted there)
set -uo pipefail
LOG_TAG=condor-down
. "$(dirname "$(readlink -f "$0")")/lib.sh"
need_root
R=${SHOAL_CONDOR_ROOT:-/var/lib/shoal-condor}
HOST_BIN=${SHOAL_CONDOR_BIN:-/usr/local/bin}
rm -f /run/shoal-condor-ok

chroot_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && echo "${p#/proc/}"
  done
  return 0
}
m=$(cat "$R/run/condor/master.pid" 2>/dev/null || true)
if [ -n "$m" ] && [ "$(readlink "/proc/$m/root" 2>/dev/null)" = "$R" ]; then
  log "condor_master (pid $m): fast shutdown"
  kill -QUIT "$m" 2>/dev/null || true
  for _ in $(seq 60); do [ -d "/proc/$m" ] || break; sleep 0.25; done
fi
left=$(chroot_pids)
if [ -n "$left" ]; then
  log "terminating leftover chroot processes: $(echo $left)"
  kill -TERM $left 2>/dev/null || true; sleep 2
  left=$(chroot_pids); [ -n "$left" ] && kill -KILL $left 2>/dev/null
fi
rm -f "$R/run/condor/master.pid"

# unmount everything under $R, deepest first
for _ in 1 2 3; do
  mps=$(awk -v r="$R" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r)
  [ -z "$mps" ] && break
  for mp in $mps; do umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true; done
done
if awk -v r="$R" 'index($2, r "/") == 1' /proc/mounts | grep -q .; then
  log "still mounted under $R:"; awk -v r="$R" 'index($2, r "/") == 1' /proc/mounts >&2
  exit 1
fi

if [ "${1:-}" = --purge ]; then
  for l in "$HOST_BIN"/condor_*; do
    [ -L "$l" ] && [ "$(readlink "$l")" = "$R/host/bin/condor-host-exec" ] && rm -f "$l"
  done
  grep -qs 'shoal ci/clusters' /etc/condor/condor_config && rm -f /etc/condor/condor_config
  log "deleting $R"
  rm -rf --one-file-system "$R"
fi
log "down"
exit 0
