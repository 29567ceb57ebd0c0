# shellcheck shell=bash
# slurm-multinode-env.sh — the layout of the multi-node Slurm cluster on GlusterFS (sourced by
# slurm-multinode-{up,down,exec,fault}.sh): names, addresses, paths. One place for each fact.
#
#   machine  netns          address       what runs there
#   fs       shoalmn-fs     10.217.0.2    glusterd + bricks: volumes "shared" (disk) and
#                                          "scratch" (a small tmpfs brick, for ENOSPC tests)
#   ctl      shoalmn-ctl    10.217.0.3    munged (own socket and key) + slurmctld (own config)
#   login    shoalmn-login  10.217.0.4    where the driver runs (`cluster exec slurm-multinode`)
#   n1..nN   shoalmn-nI     10.217.0.1I   slurmd (8 CPUs declared each)
#   hub      shoalmn-hub    -             the bridge joining them; nothing else
# Every client machine (login, nodes) has a private /tmp, /var/tmp and /dev/shm, and sees
# /home and /root only through its own GlusterFS FUSE mount of "shared".

MN_NODES=${SHOAL_MN_NODES:-3}          # compute nodes n1..nN (at most 9)
MN_CPUS=${SHOAL_MN_CPUS:-8}            # CPUs declared per node
MN_SCRATCH_MB=${SHOAL_MN_SCRATCH_MB:-64}
# above the fault tests' 60 s outages: a stalled server or a cut link blocks I/O, not fails it
MN_PING_TIMEOUT=${SHOAL_MN_PING_TIMEOUT:-90}

NS_PREFIX=shoalmn
NS_HUB=hub
MN_BRIDGE=mnbr0
MN_NET=10.217.0
MN_FS_IP=$MN_NET.2
MN_CTL_IP=$MN_NET.3
MN_LOGIN_IP=$MN_NET.4
node_ip() { echo "$MN_NET.1${1#n}"; }
mn_nodes() { local i; for ((i = 1; i <= MN_NODES; i++)); do echo "n$i"; done; }
# machines that mount the volumes (the driver's and the compute nodes)
mn_clients() { echo login; mn_nodes; }

MN_ETC=/etc/shoal-mn
MN_STATE=/var/lib/shoal-mn
MN_BRICKS=/srv/shoal-mn/bricks        # hidden (an empty tmpfs) on every client machine
MN_LOG=/var/log/shoal-mn
NS_RUN=/run/shoal-mn
MN_MNT=/mnt/shoal-mn                   # the volumes' mount points on client machines
MN_SHARED=$MN_MNT/shared               # volume "shared": home/ root/ work/
MN_SCRATCH=$MN_MNT/scratch             # volume "scratch": small, fills up
MN_WORK=$MN_SHARED/work                # world-writable (1777) scratch space for work dirs
MN_CONF=$MN_ETC/slurm.conf
MN_MUNGE_SOCKET=$NS_RUN/munge/munge.socket.2
MN_USER=${SHOAL_USER:-shoal}
