#!/usr/bin/env bash
# slurm-multinode-down.sh — stop the cluster of slurm-multinode-up.sh (MN_LAYOUT: multinode or
# isolated): every process of its machines, their namespaces, and its state (the volumes'
# contents are scratch space). No error if not up.
#   --purge  also delete its logs, config and munge key
set -uo pipefail
LOG_TAG=${MN_LAYOUT:-multinode}-down
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/lib.sh"
. "$HERE/netns-lib.sh"
. "$HERE/slurm-multinode-env.sh"
need_root
rm -f "$NS_RUN/stamp"
[ "$MN_GLUSTER" = 0 ] || ns_kill fs CONT   # a stopped server keeps its clients' processes from exiting
# clients first (their FUSE mounts, slurmds, startds), then the controller, then the server
for m in $(mn_clients); do ns_stop "$m" 5 & done
wait
ns_stop ctl 5
[ "$MN_GLUSTER" = 0 ] || ns_stop fs 5
for m in $(mn_machines) "$NS_HUB"; do
  if ns_exists "$m"; then ip netns del "$(ns_name "$m")"; fi
done
rm -rf "${MN_STATE:?}/glusterd" "${MN_STATE:?}/ctld" "${MN_STATE:?}/slurmd" "${MN_STATE:?}/condor" \
  "$MN_STATE/scratch-filled" "${NS_RUN:?}"
[ "$MN_GLUSTER" = 0 ] || rm -rf "${MN_BRICKS:?}"/*
if [ "${1:-}" = --purge ]; then
  rm -rf "${MN_LOG:?}" "${MN_STATE:?}" "${MN_ETC:?}" "/srv/$MN_TAG" "$MN_MNT"
  log "purged logs, state and config"
fi
log "down"
exit 0
