#!/usr/bin/env bash
# slurm-multinode-fault.sh — inject (and undo) faults on the multi-node cluster; tests and people
# use this one tool. `cluster up slurm-multinode` undoes every fault at once.
#   node-kill NODE     SIGKILL every process of NODE's namespaces: slurmd, jobs, its FUSE client
#   node-start NODE    bring a killed node back (holder, mounts, slurmd; resumed in Slurm)
#   link-down MACHINE  cut MACHINE's link at the hub (a partition: packets are dropped, nothing
#   link-up MACHINE      fails locally), and restore it
#   fs-stop / fs-cont  SIGSTOP / SIGCONT every GlusterFS server process (glusterd, glusterfsd):
#                      I/O on every client blocks until fs-cont (ping-timeout: slurm-multinode-env.sh)
#   fill [MACHINE]     fill the "scratch" volume from MACHINE (default n1) until ENOSPC
#   unfill             delete the fill file
#   hold JOB / release JOB   hold or release a job of the login machine's user (Slurm JOBID,
#                      or HTCondor CLUSTER.PROC on the isolated cluster)
#   status             links, stopped server processes, fill state, Slurm's view of the nodes
# (isolated: no fs-stop/fs-cont/fill; node-kill takes Slurm nodes n* and HTCondor nodes c*)
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/lib.sh"
. "$HERE/netns-lib.sh"
. "$HERE/slurm-multinode-env.sh"
LOG_TAG=$MN_CLUSTER-fault
need_root
close_inherited_fds
usage() { sed -n '4,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
machine_ok() {
  case " $(mn_machines | tr '\n' ' ') " in *" $1 "*) ;; *) die "no machine '$1' ($(mn_machines | tr '\n' ' '))" ;; esac
}
node_ok() {
  case " $(mn_nodes | tr '\n' ' ') $(mn_condor_nodes | tr '\n' ' ') " in
    *" $1 "*) ;; *) die "no compute node '$1' ($(mn_nodes | tr '\n' ' ')$(mn_condor_nodes | tr '\n' ' '))" ;;
  esac
}
# root on the login machine: may hold and release any user's jobs (a site admin's view)
as_login() { MN_LAYOUT=$MN_LAYOUT "$HERE/slurm-multinode-exec.sh" --user root -- "$@"; }
gluster_only() { [ "$MN_GLUSTER" = 1 ] || die "$kind: $MN_CLUSTER has no shared filesystem"; }
[ $# -ge 1 ] || usage
kind=$1; shift
case "$kind" in
  node-kill)
    [ $# = 1 ] || usage; node_ok "$1"
    pids=$(ns_pids "$1" | wc -l)
    ns_kill "$1" KILL
    for _ in $(seq 50); do [ -z "$(ns_pids "$1")" ] && break; sleep 0.1; done
    [ -z "$(ns_pids "$1")" ] || die "processes of $1 survived SIGKILL: $(ns_pids "$1" | tr '\n' ' ')"
    rm -f "$NS_RUN/slurmd.$1.pid" "$(holder_pidfile "$1")"
    log "killed $1: $pids processes (its daemons, jobs, FUSE clients, holder)" ;;
  node-start)
    [ $# = 1 ] || usage; node_ok "$1"
    MN_LAYOUT=$MN_LAYOUT "$HERE/slurm-multinode-up.sh" >/dev/null ;;
  link-down|link-up)
    [ $# = 1 ] || usage; machine_ok "$1"
    ns_link_set "$1" "${kind#link-}"
    log "$1: link ${kind#link-}" ;;
  fs-stop|fs-cont)
    # fs-stop notes the server's pids and fs-cont signals exactly those: while the server is
    # stopped, a scan of every process's namespace (ns_pids) can block behind a process stuck
    # mid-exec on the volume until the clients' ping-timeout, which stretched a 60 s stall to
    # three minutes and cut every client off.
    [ $# = 0 ] || usage; gluster_only
    if [ "$kind" = fs-stop ]; then
      pids=""
      for p in $(ns_pids fs); do
        case "$(cat /proc/$p/comm 2>/dev/null)" in glusterd|glusterfsd|glusterfs) pids="$pids $p" ;; esac
      done
      mkdir -p "$MN_STATE" && echo "$pids" > "$MN_STATE/fs-stopped"
      for p in $pids; do kill -s STOP "$p" 2>/dev/null || true; done
      log "GlusterFS server processes:$pids: SIGSTOP"
    else
      log "GlusterFS server processes: $(fs_cont_noted): SIGCONT"
    fi ;;
  fill)
    gluster_only; m=${1:-n1}; machine_ok "$m"
    f=$MN_SCRATCH/.fill-$m
    echo "$f" > "$MN_STATE/scratch-filled"
    # dd stops at ENOSPC (its error is expected); fsync so the brick really is full
    on "$m" dd if=/dev/zero of="$f" bs=1M conv=fsync status=none 2>/dev/null || true
    log "scratch volume filled from $m: $(on "$m" df -h --output=avail "$MN_SCRATCH" | tail -1 | tr -d ' ') left" ;;
  unfill)
    gluster_only
    if [ -s "$MN_STATE/scratch-filled" ]; then on login rm -f "$(cat "$MN_STATE/scratch-filled")"; fi
    rm -f "$MN_STATE/scratch-filled"
    log "scratch volume: $(on login df -h --output=avail "$MN_SCRATCH" | tail -1 | tr -d ' ') free" ;;
  hold|release)
    [ $# = 1 ] || usage
    case "$1" in
      *.*) as_login "condor_$kind" "$1" ;;
      *) as_login scontrol "$kind" "$1" ;;
    esac
    log "$kind $1" ;;
  status)
    for m in $(mn_machines); do printf '%-6s link %-4s  processes %s\n' "$m" "$(ns_link_state "$m")" "$(ns_pids "$m" | wc -l)"; done
    stopped=0
    [ "$MN_GLUSTER" = 0 ] || for p in $(ns_pids fs); do [ "$(awk '{print $3}' /proc/$p/stat)" != T ] || stopped=$((stopped + 1)); done
    [ "$MN_GLUSTER" = 0 ] || echo "fs: $stopped stopped server processes"
    if [ -e "$MN_STATE/scratch-filled" ]; then echo "scratch: filled ($(cat "$MN_STATE/scratch-filled"))"; fi
    SLURM_CONF=$MN_CONF on ctl sinfo -h -N -o '%N %T %E' | sort -u ;;
  *) usage ;;
esac
