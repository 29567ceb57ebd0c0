# shellcheck shell=bash
# slurm-multinode-env.sh — the layouts of the namespace clusters (sourced by
# slurm-multinode-{up,down,exec,fault}.sh): names, addresses, paths. One place for each fact.
# MN_LAYOUT chooses the cluster: `multinode` (slurm-multinode, the default) or `isolated`.
#
# slurm-multinode: nodes that share a GlusterFS volume
#   machine  netns          address       what runs there
#   fs       shoalmn-fs     10.217.0.2    glusterd + bricks: volumes "shared" (disk) and
#                                          "scratch" (a small tmpfs brick, for ENOSPC tests)
#   ctl      shoalmn-ctl    10.217.0.3    munged (own socket and key) + slurmctld (own config)
#   login    shoalmn-login  10.217.0.4    where the driver runs (`cluster exec slurm-multinode`)
#   n1..nN   shoalmn-nI     10.217.0.1I   slurmd (8 CPUs declared each)
#   hub      shoalmn-hub    -             the bridge joining them; nothing else
# Every client machine (login, nodes) has a private /tmp, /var/tmp, /dev/shm and /root, and sees
# /home only through its own GlusterFS FUSE mount of "shared".
#
# isolated: nothing shared but the software (the checkout's venv and its Python)
#   ctl      shoaliso-ctl   10.218.0.3    munged + slurmctld; HTCondor collector + negotiator
#   login    shoaliso-login 10.218.0.4    the driver; HTCondor schedd (submit machine)
#   n1, n2   shoaliso-nI    10.218.0.1I   slurmd
#   c1, c2   shoaliso-cI    10.218.0.2I   HTCondor startd (execute nodes)
# Every machine but ctl has a private /tmp, /var/tmp, /dev/shm, /home and /root, and no view of
# /work (but the venv), /srv, /mnt or the condor chroot's host binds.

MN_LAYOUT=${MN_LAYOUT:-multinode}
MN_CPUS=${SHOAL_MN_CPUS:-8}            # CPUs declared per Slurm node
MN_USER=${SHOAL_USER:-shoal}
NS_HUB=hub
MN_BRIDGE=mnbr0
case "$MN_LAYOUT" in
  multinode)
    MN_CLUSTER=slurm-multinode
    MN_NODES=${SHOAL_MN_NODES:-3}      # compute nodes n1..nN (at most 9)
    MN_CONDOR_NODES=0
    MN_SCRATCH_MB=${SHOAL_MN_SCRATCH_MB:-64}
    # above the fault tests' 60 s outages: a stalled server or a cut link blocks I/O, not fails it
    MN_PING_TIMEOUT=${SHOAL_MN_PING_TIMEOUT:-90}
    NS_PREFIX=shoalmn
    MN_NET=10.217.0
    MN_TAG=shoal-mn ;;
  isolated)
    MN_CLUSTER=isolated
    MN_NODES=${SHOAL_ISO_NODES:-2}
    MN_CONDOR_NODES=${SHOAL_ISO_CONDOR_NODES:-2}
    NS_PREFIX=shoaliso
    MN_NET=10.218.0
    MN_TAG=shoal-iso ;;
  *) echo "MN_LAYOUT must be multinode or isolated, not '$MN_LAYOUT'" >&2; exit 2 ;;
esac
MN_GLUSTER=0; [ "$MN_LAYOUT" = multinode ] && MN_GLUSTER=1
MN_FS_IP=$MN_NET.2
MN_CTL_IP=$MN_NET.3
MN_LOGIN_IP=$MN_NET.4
node_ip() { case "$1" in c*) echo "$MN_NET.2${1#c}" ;; *) echo "$MN_NET.1${1#n}" ;; esac; }
mn_nodes() { local i; for ((i = 1; i <= MN_NODES; i++)); do echo "n$i"; done; }
mn_condor_nodes() { local i; for ((i = 1; i <= MN_CONDOR_NODES; i++)); do echo "c$i"; done; }
# the machines users' processes run on: the driver's and the compute nodes
mn_clients() { echo login; mn_nodes; mn_condor_nodes; }
mn_machines() { [ "$MN_GLUSTER" = 1 ] && echo fs; echo ctl; mn_clients; }
# SIGCONT the GlusterFS server processes `cluster fault ... fs-stop` noted (a scan of every
# process's namespace can block while they are stopped); prints them.
fs_cont_noted() {
  local pids
  pids=$(cat "$MN_STATE/fs-stopped" 2>/dev/null || true)
  rm -f "$MN_STATE/fs-stopped"
  for p in $pids; do kill -s CONT "$p" 2>/dev/null || true; done
  echo "$pids"
}

MN_ETC=/etc/$MN_TAG
MN_STATE=/var/lib/$MN_TAG
MN_BRICKS=/srv/$MN_TAG/bricks          # hidden (an empty tmpfs) on every client machine
MN_LOG=/var/log/$MN_TAG
NS_RUN=/run/$MN_TAG
MN_MNT=/mnt/$MN_TAG                    # the volumes' mount points on client machines
MN_SHARED=$MN_MNT/shared               # volume "shared": home/ root/ work/
MN_SCRATCH=$MN_MNT/scratch             # volume "scratch": small, fills up
if [ "$MN_GLUSTER" = 1 ]; then
  MN_WORK=$MN_SHARED/work              # world-writable (1777) scratch space for work dirs
  MN_WORK_SCRATCH=$MN_SCRATCH/work
else
  MN_WORK=/tmp                         # each machine's own
  MN_WORK_SCRATCH=/tmp
fi
MN_CONF=$MN_ETC/slurm.conf
MN_MUNGE_SOCKET=$NS_RUN/munge/munge.socket.2
# HTCondor (isolated): the chroot of condor-up.sh provides the binaries; each machine binds its
# own config, state and private dirs over it in its mount namespace
MN_CONDOR_ROOT=${SHOAL_CONDOR_ROOT:-/var/lib/shoal-condor}
