#!/usr/bin/env bash
# slurm-multinode-exec.sh — run a command on a machine of the multi-node cluster (default: the
# login machine), in its network, mount and UTS namespaces, as a user, with a login environment:
# HOME (on GlusterFS), SLURM_CONF of this cluster, and this checkout's venv first on PATH (so
# `python -c 'import shoal'` and `shoal` work there). SHOAL_MN_WORK and SHOAL_MN_SCRATCH name
# world-writable dirs on the "shared" and the small "scratch" volume (isolated: /tmp), and on
# the isolated cluster CONDOR_CONFIG its HTCondor pool. MN_LAYOUT chooses the cluster.
#   slurm-multinode-exec.sh [--user NAME] [--node MACHINE] [--] CMD...
# The working directory is the caller's if that path exists there, else the user's home.
# Variables passed through when set: CI, TERM, PYTEST_ADDOPTS, and SHOAL_TEST_*.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/lib.sh"
. "$HERE/netns-lib.sh"
. "$HERE/slurm-multinode-env.sh"
LOG_TAG=$MN_CLUSTER-exec
REPO=$(cd "$HERE/../.." && pwd)
VENV=${SHOAL_VENV:-$REPO/.venv}
user=root machine=login
while [ $# -gt 0 ]; do
  case "$1" in
    --user) user=$2; shift 2 ;;
    --node) machine=$2; shift 2 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (--user NAME, --node MACHINE)" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || die "no command (usage: cluster exec $MN_CLUSTER [--user NAME] [--node MACHINE] -- CMD...)"
need_root
holder_ready "$machine" ||
  die "machine '$machine' of $MN_CLUSTER is not up (hint: sudo ci/clusters/cluster up $MN_CLUSTER)"
home=$(getent passwd "$user" | cut -d: -f6) || die "no user '$user'"
wd=$PWD
on "$machine" runuser -u "$user" -- test -x "$wd" 2>/dev/null || wd=$home
vars=(HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash LANG=C.UTF-8 SLURM_CONF="$MN_CONF"
      SHOAL_MN_WORK="$MN_WORK" SHOAL_MN_SCRATCH="$MN_WORK_SCRATCH"
      PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
[ "$MN_CONDOR_NODES" = 0 ] || vars+=(CONDOR_CONFIG="$MN_ETC/condor/client.conf")
for v in CI TERM PYTEST_ADDOPTS $(compgen -e | grep '^SHOAL_TEST_' || true); do
  [ -n "${!v+x}" ] && vars+=("$v=${!v}")
done
exec nsenter -t "$(holder_pid "$machine")" -m -n -u --wd="$wd" -- runuser -u "$user" -- env -i "${vars[@]}" "$@"
