#!/usr/bin/env bash
# slurm-multinode-down.sh — stop the multi-node cluster of slurm-multinode-up.sh: every process of
# its machines, their namespaces, and the volumes' contents (scratch space). No error if not up.
#   --purge  also delete its logs, config and munge key
set -uo pipefail
LOG_TAG=slurm-multinode-down
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/lib.sh"
. "$HERE/netns-lib.sh"
. "$HERE/slurm-multinode-env.sh"
need_root
rm -f "$NS_RUN/stamp"
ns_kill fs CONT   # a stopped server would keep its clients' processes from exiting
# clients first (their FUSE mounts and slurmds), then the controller, then the server
for m in $(mn_clients); do ns_stop "$m" 5 & done
wait
ns_stop ctl 5
ns_stop fs 5
for m in $(mn_clients) ctl fs "$NS_HUB"; do
  ns_exists "$m" && ip netns del "$(ns_name "$m")"
done
rm -rf "${MN_STATE:?}/glusterd" "${MN_STATE:?}/ctld" "${MN_STATE:?}/slurmd" "${MN_BRICKS:?}"/* \
  "$MN_STATE/scratch-filled" "${NS_RUN:?}"
if [ "${1:-}" = --purge ]; then
  rm -rf "${MN_LOG:?}" "${MN_STATE:?}" "${MN_ETC:?}" "$(dirname "$MN_BRICKS")" "$MN_MNT"
  log "purged logs, state and config"
fi
log "down"
exit 0
