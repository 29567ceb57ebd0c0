#!/usr/bin/env bash
# slurm-multinode-up.sh — a multi-node cluster on one host, each machine in its own network
# namespace (own address) and mount namespace (private /tmp). MN_LAYOUT (slurm-multinode-env.sh):
#   multinode: a GlusterFS server, a controller, a login machine and N Slurm nodes; /home and
#              the work dirs only through each machine's own GlusterFS FUSE mount (/root private)
#   isolated:  controller, login, Slurm nodes and HTCondor execute nodes that share nothing but
#              the software (venv + Python): private /tmp, /home and /root everywhere
# Independent of the single-host Slurm of slurm-up.sh (own munged socket and key, own slurm.conf,
# state and logs) and of the HTCondor pool of condor-up.sh (whose chroot it borrows).
#
# Idempotent: a second run with a healthy cluster is a quick no-op; a partly broken one (a killed
# node, a cut link, a stopped server, a full scratch volume) is repaired. A changed layout or
# script rebuilds everything (the volumes are scratch space: `down` wipes them).
# Knobs: slurm-multinode-env.sh (SHOAL_MN_NODES, SHOAL_MN_CPUS, ...), SHOAL_VENV,
#        SHOAL_CLUSTER_FORCE_SMOKE=1 (run the smoke job even when everything looks healthy).
# Last line of stdout: the client environment for the login machine.
set -euo pipefail
LOG_TAG=slurm-multinode-up
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/lib.sh"
. "$HERE/netns-lib.sh"
. "$HERE/slurm-multinode-env.sh"
need_root
close_inherited_fds
REPO=$(cd "$HERE/../.." && pwd)
VENV=${SHOAL_VENV:-$REPO/.venv}
# (the login machine sets SLURM_CONF itself; this cluster is unreachable from the host namespace)
ENV_LINE="export SHOAL_${MN_LAYOUT^^}_SLURM_CONF=$MN_CONF"
LOG_TAG=$MN_CLUSTER-up

ensure_shoal_user
if [ "$MN_GLUSTER" = 1 ]; then
  apt_install $SLURM_PKGS $GLUSTER_PKGS
  [ -c /dev/fuse ] || die "no /dev/fuse: the GlusterFS client needs FUSE"
else
  apt_install $SLURM_PKGS
fi
if [ "$MN_CONDOR_NODES" -gt 0 ] && [ ! -e "$MN_CONDOR_ROOT/.shoal-rootfs-ok" ]; then
  log "no HTCondor chroot yet: condor-up.sh builds it (and starts the single-host pool)"
  "$HERE/condor-up.sh" >/dev/null
fi

# ------------------------------------------------------------------ software paths
# The Python installation and the checkout are the "site software" every machine sees from the
# host filesystem. Those under a directory the machines cover (HIDDEN) are bound back at the
# same path, so the venv works unchanged on every machine and for every user.
python_base() {
  local py=$VENV/bin/python
  [ -x "$py" ] || py=$(command -v python3)
  "$py" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))'
}
# hidden on client machines: the private /tmp, /var/tmp, /dev/shm and /root, and /home (the
# Gluster homes, or private ones); isolated also /work, /srv, /mnt and the checkout itself,
# wherever it is (CI clones to /check/work/main, which none of the others covers). Software
# under them is bound back: the checkout (login only when isolated), the venv and the venv's
# base Python (a checkout under /tmp, as a CI clone may be, stays usable).
HIDDEN="/tmp /var/tmp /dev/shm /root /home"
if [ "$MN_GLUSTER" != 1 ]; then
  HIDDEN="$HIDDEN /work /srv /mnt"
  covered=0
  for h in $HIDDEN; do case "$REPO/" in "$h"/*) covered=1 ;; esac; done
  [ $covered = 1 ] || HIDDEN="$HIDDEN $REPO"
fi
keep_paths() {  # keep_paths MACHINE
  local p k h out="" inside cands
  cands="$(readlink -f "$VENV" 2>/dev/null || echo "$VENV") $(python_base)"
  { [ "$MN_GLUSTER" = 1 ] || [ "$1" = login ]; } && cands="$REPO $cands"
  for p in $cands; do
    inside=0
    for h in $HIDDEN; do case "$p/" in "$h"/*) inside=1 ;; esac; done
    [ $inside = 1 ] || continue
    for k in $out; do case "$p/" in "$k"/*) inside=2 ;; esac; done
    [ $inside = 2 ] || out="$out $p"
  done
  echo "$out"
}
KEEP="$(keep_paths login) / $(keep_paths n1)"

STAMP_WANT=$( { cat "$HERE/slurm-multinode-up.sh" "$HERE/slurm-multinode-env.sh" "$HERE/netns-lib.sh"
  echo "$MN_LAYOUT $KEEP $MN_NODES $MN_CONDOR_NODES $MN_CPUS ${MN_SCRATCH_MB:-} ${MN_PING_TIMEOUT:-}"; } | sha1sum | cut -c1-16)
STAMP=$NS_RUN/stamp

# ------------------------------------------------------------------ pieces
G() { on fs timeout 60 gluster --mode=script "$@"; }
fs_procs_running() { local p; for p in $(ns_pids fs); do [ "$(awk '{print $3}' /proc/$p/stat)" != T ] || return 1; done; }
bricks_online() {
  local v
  for v in shared scratch; do
    timeout 10 nsenter -t "$(holder_pid fs)" -m -n -u -- gluster --mode=script volume status "$v" --xml 2>/dev/null |
      grep -q '<status>1</status>' || return 1
  done
}
fs_healthy() { holder_ready fs && bricks_online; }
mounted() { [ "$(timeout 10 nsenter -t "$(holder_pid "$1")" -m -- stat -f -c %T "$2" 2>/dev/null)" = fuseblk ]; }
client_healthy() {
  holder_ready "$1" || return 1
  [ "$MN_GLUSTER" = 0 ] || { mounted "$1" "$MN_SHARED" && mounted "$1" "$MN_SCRATCH"; } || return 1
  # the software bound back, usable by the user (a bind on a directory another machine
  # replaced vanishes)
  timeout 10 nsenter -t "$(holder_pid "$1")" -m -- runuser -u "$MN_USER" -- test -x "$VENV/bin/python"
}
alive_pidfile() { [ -s "$1" ] && pid_live "$(cat "$1")"; }
munge_ok() { on ctl sh -c "munge -S $MN_MUNGE_SOCKET -n | unmunge -S $MN_MUNGE_SOCKET" >/dev/null 2>&1; }
ctl_healthy() {
  holder_ready ctl && alive_pidfile "$NS_RUN/munge/munged.pid" && munge_ok &&
    alive_pidfile "$NS_RUN/slurmctld.pid" && SLURM_CONF=$MN_CONF on ctl scontrol ping 2>/dev/null | grep -q 'is UP'
}
sinfo_states() { SLURM_CONF=$MN_CONF on ctl sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }
nodes_idle() {
  local n st
  for n in $(mn_nodes); do
    st=$(sinfo_states | awk -v n="$n" '$1 == n {print $2; exit}')
    case "$st" in idle|mixed|allocated|completing) ;; *) return 1 ;; esac
  done
}
healthy() {
  local m
  [ "$(cat "$STAMP" 2>/dev/null)" = "$STAMP_WANT" ] || return 1
  for m in $(mn_machines); do [ "$(ns_link_state "$m")" = up ] || return 1; done
  [ ! -e "$MN_STATE/scratch-filled" ] || return 1
  if [ "$MN_GLUSTER" = 1 ]; then fs_procs_running && fs_healthy || return 1; fi
  ctl_healthy || return 1
  for m in $(mn_clients); do client_healthy "$m" || return 1; done
  for m in $(mn_nodes); do alive_pidfile "$NS_RUN/slurmd.$m.pid" || return 1; done
  condor_healthy && nodes_idle
}

write_hosts() {
  local n
  { echo "127.0.0.1 localhost"
    [ "$MN_GLUSTER" = 0 ] || echo "$MN_FS_IP mn-fs"
    echo "$MN_CTL_IP mn-ctl"; echo "$MN_LOGIN_IP mn-login"
    for n in $(mn_nodes) $(mn_condor_nodes); do echo "$(node_ip "$n") $n"; done; } > "$MN_ETC/hosts.new"
  install_if_changed "$MN_ETC/hosts.new" "$MN_ETC/hosts" || true
}

machine_ip() { case "$1" in fs) echo "$MN_FS_IP" ;; ctl) echo "$MN_CTL_IP" ;; login) echo "$MN_LOGIN_IP" ;; *) node_ip "$1" ;; esac; }
network() {
  local m
  ns_hub_ensure "$MN_BRIDGE"
  for m in $(mn_machines); do ns_ensure "$m"; ns_link "$m" "$(machine_ip "$m")/24" "$MN_BRIDGE"; done
}

start_fs() {
  log "starting the GlusterFS server (fs, $MN_FS_IP)"
  rm -rf "$MN_STATE/glusterd" "${MN_BRICKS:?}/shared"
  mkdir -p "$MN_STATE/glusterd" "$MN_BRICKS/shared" "$MN_BRICKS/scratch" "$MN_LOG/gluster/fs" "$NS_RUN/fs-run"
  cp -a /var/lib/glusterd/groups /var/lib/glusterd/hooks "$MN_STATE/glusterd/" 2>/dev/null || true
  holder_start fs mn-fs "
    mount --bind $MN_ETC/hosts /etc/hosts
    mount --bind $MN_STATE/glusterd /var/lib/glusterd
    mount --bind $MN_LOG/gluster/fs /var/log/glusterfs
    mount --bind $NS_RUN/fs-run /run
    mkdir -p /run/gluster
    mount -t tmpfs -o size=${MN_SCRATCH_MB}m,mode=0755 $NS_PREFIX-scratch $MN_BRICKS/scratch" "$MN_LOG/holder.fs.log"
  holder_wait fs 10 "$MN_LOG/holder.fs.log" || die "the fs machine did not start"
  on fs glusterd -p /run/gluster/glusterd.pid || { show_logs "$MN_LOG/gluster/fs/glusterd.log"; die "glusterd failed"; }
  wait_for 30 on fs gluster --mode=script pool list || { show_logs "$MN_LOG/gluster/fs/glusterd.log"; die "glusterd does not answer"; }
  local v
  for v in shared scratch; do
    G volume create "$v" "$MN_FS_IP:$MN_BRICKS/$v" force >/dev/null  # force: the brick is on the root fs
    G volume set "$v" network.ping-timeout "$MN_PING_TIMEOUT" >/dev/null
    G volume start "$v" >/dev/null
  done
  wait_for 30 bricks_online || { show_logs "$MN_LOG"/gluster/fs/bricks/*.log; die "the bricks did not come online"; }
}

start_ctl() {
  log "starting the controller (ctl, $MN_CTL_IP): munged + slurmctld"
  ns_stop ctl 5
  install -d -o munge -g munge -m 0755 "$NS_RUN/munge"
  install -d -o munge -g munge -m 0700 "$MN_LOG/munge" "$MN_STATE/munge"
  install -d -o slurm -g slurm "$MN_STATE/ctld" "$MN_LOG/slurm"
  local setup="mount --bind $MN_ETC/hosts /etc/hosts"
  if [ "$MN_CONDOR_NODES" -gt 0 ]; then
    setup="$setup
    mount --bind $MN_ETC/hosts $MN_CONDOR_ROOT/etc/hosts
    mount --bind $MN_ETC/condor/ctl $MN_CONDOR_ROOT/etc/condor
    mount --bind $MN_STATE/condor/ctl $MN_CONDOR_ROOT/var/lib/condor"
  fi
  holder_start ctl mn-ctl "$setup" "$MN_LOG/holder.ctl.log"
  holder_wait ctl 10 "$MN_LOG/holder.ctl.log" || die "the ctl machine did not start"
  rm -f "$MN_MUNGE_SOCKET" "$MN_MUNGE_SOCKET.lock"
  on ctl runuser -u munge -- /usr/sbin/munged --socket="$MN_MUNGE_SOCKET" --key-file="$MN_ETC/munge.key" \
    --pid-file="$NS_RUN/munge/munged.pid" --log-file="$MN_LOG/munge/munged.log" \
    --seed-file="$MN_STATE/munge/munged.seed" || { show_logs "$MN_LOG/munge/munged.log"; die "munged failed"; }
  wait_for 10 munge_ok || { show_logs "$MN_LOG/munge/munged.log"; die "munge does not work"; }
  on ctl env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SLURM_CONF="$MN_CONF" /usr/sbin/slurmctld -f "$MN_CONF" \
    2>"$MN_LOG/slurm/slurmctld.start.err" || { show_logs "$MN_LOG/slurm/slurmctld.start.err" "$MN_LOG/slurm/slurmctld.log"; die "slurmctld failed"; }
  wait_for 30 sh -c "SLURM_CONF=$MN_CONF nsenter -t $(holder_pid ctl) -m -n -u scontrol ping | grep -q 'is UP'" ||
    { show_logs "$MN_LOG/slurm/slurmctld.log"; die "slurmctld does not answer"; }
}

# the script a client machine's holder runs: private scratch dirs, hidden bricks and host dirs,
# the volumes and the Gluster homes (multinode) or private homes (isolated), the software paths
# bound back, and for an HTCondor machine the chroot's view of all that
client_setup() {
  local m=$1 i=0 p keep_stage="" keep_move="" h hide="" R=$MN_CONDOR_ROOT
  for p in $(keep_paths "$m"); do
    # staged outside everything that gets covered, moved back once all is mounted
    keep_stage="$keep_stage
    mkdir -p $NS_RUN/keep/$m/$i; mount --bind $p $NS_RUN/keep/$m/$i"
    keep_move="$keep_move
    mkdir -p $p; mount --move $NS_RUN/keep/$m/$i $p"
    i=$((i + 1))
  done
  local uid gid
  uid=$(id -u "$MN_USER"); gid=$(id -g "$MN_USER")
  cat <<EOF
    $keep_stage
    mount --bind $MN_ETC/hosts /etc/hosts
    mount -t tmpfs -o size=2g,mode=1777 $NS_PREFIX-tmp-$m /tmp
    mount -t tmpfs -o size=256m,mode=1777 $NS_PREFIX-shm-$m /dev/shm
    mount -t tmpfs -o size=256m,mode=1777 $NS_PREFIX-vartmp-$m /var/tmp
    mkdir -p /srv/$MN_TAG; mount -t tmpfs -o size=1m,mode=0755 $NS_PREFIX-nobricks /srv/$MN_TAG
EOF
  if [ "$MN_GLUSTER" = 1 ]; then
    cat <<EOF
    mount -t glusterfs -o log-file=$MN_LOG/gluster/$m-shared.log $MN_FS_IP:/shared $MN_SHARED
    mount -t glusterfs -o log-file=$MN_LOG/gluster/$m-scratch.log $MN_FS_IP:/scratch $MN_SCRATCH
    if [ $m = login ]; then
      mkdir -p $MN_SHARED/home $MN_WORK $MN_WORK_SCRATCH
      chmod 0755 $MN_SHARED/home
      chmod 1777 $MN_WORK $MN_WORK_SCRATCH
      [ -d $MN_SHARED/home/$MN_USER ] || install -d -o $uid -g $gid -m 0755 $MN_SHARED/home/$MN_USER
    fi
    mount --bind $MN_SHARED/home /home
    mount -t tmpfs -o size=512m,mode=0755 $NS_PREFIX-root-$m /root
EOF
  else
    for h in $HIDDEN; do
      case " /tmp /var/tmp /dev/shm " in *" $h "*) continue ;; esac  # private already (1777)
      hide="$hide
    mount -t tmpfs -o size=512m,mode=0755 $NS_PREFIX-$(basename "$h")-$m $h"; done
    cat <<EOF
    $hide
    install -d -o $uid -g $gid -m 0755 /home/$MN_USER
EOF
  fi
  echo "    $keep_move"
  echo "    rmdir $NS_RUN/keep/$m/* 2>/dev/null || true"
  if [ -d "$R/usr" ]; then
    case "$m" in
      c*|login)
        [ "$MN_CONDOR_NODES" -gt 0 ] || { echo "    mount -t tmpfs -o size=1m,mode=0755 $NS_PREFIX-nocondor $R"; return; }
        # the chroot's own binds of host dirs (condor-up.sh) give way to this machine's
        cat <<EOF
    for d in tmp home work root/.pyenv root; do if mountpoint -q $R/\$d; then umount -l $R/\$d; fi; done
    mount --rbind /tmp $R/tmp; mount --rbind /home $R/home; mount --rbind /root $R/root
    mkdir -p $R/work; mount --rbind /work $R/work
    mount --bind $MN_ETC/hosts $R/etc/hosts
    mount --bind $MN_ETC/condor/$m $R/etc/condor
    mount --bind $MN_STATE/condor/$m $R/var/lib/condor
EOF
        # the software bound back outside those (a CI checkout at /check/work/main: its venv)
        for p in $(keep_paths "$m"); do
          case "$p/" in /tmp/* | /home/* | /root/* | /work/*) continue ;; esac
          echo "    mkdir -p $R$p; mount --rbind $p $R$p"
        done
        ;;
      *) echo "    mount -t tmpfs -o size=1m,mode=0755 $NS_PREFIX-nocondor $R" ;;
    esac
  fi
}

start_client() {
  local m=$1 host=$1
  [ "$m" = login ] && host=mn-login
  ns_stop "$m" 5
  rm -f "$NS_RUN/slurmd.$m.pid"
  mkdir -p "$MN_LOG/gluster"
  holder_start "$m" "$host" "$(client_setup "$m")" "$MN_LOG/holder.$m.log"
}

wait_client() {
  holder_wait "$1" 60 "$MN_LOG/holder.$1.log" || die "machine $1 did not start (its mounts?)"
  [ "$MN_GLUSTER" = 0 ] || mounted "$1" "$MN_SHARED" || die "machine $1: $MN_SHARED is not a GlusterFS mount"
}

start_slurmd() {
  local n=$1
  install -d "$MN_STATE/slurmd/$n"
  on "$n" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SLURM_CONF="$MN_CONF" /usr/sbin/slurmd -f "$MN_CONF" -N "$n" \
    2>>"$MN_LOG/slurm/slurmd.$n.start.err" || { show_logs "$MN_LOG/slurm/slurmd.$n.start.err" "$MN_LOG/slurm/slurmd.$n.log"; die "slurmd on $n failed"; }
}

write_slurm_conf() {
  local n mem=4000
  cat > "$MN_CONF.new" <<CONF
# written by shoal ci/clusters/slurm-multinode-up.sh — multi-node test cluster, no cgroups, no accounting
ClusterName=shoalmn
SlurmctldHost=mn-ctl($MN_CTL_IP)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# own munged (the single-host cluster's can stop while this one runs); cred_expire: see slurm-up.sh
AuthInfo=socket=$MN_MUNGE_SOCKET,cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$MN_LOG/slurm/jobcomp.log
SwitchType=switch/none
ReturnToService=2
# a node that stops answering is DOWN after 30 s (its batch jobs are requeued, JobRequeue=1)
SlurmdTimeout=30
StateSaveLocation=$MN_STATE/ctld
SlurmdSpoolDir=$MN_STATE/slurmd/%n
SlurmctldPidFile=$NS_RUN/slurmctld.pid
SlurmdPidFile=$NS_RUN/slurmd.%n.pid
SlurmctldLogFile=$MN_LOG/slurm/slurmctld.log
SlurmdLogFile=$MN_LOG/slurm/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=300
MaxJobCount=50000
MaxArraySize=1001
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
CONF
  for n in $(mn_nodes); do
    echo "NodeName=$n NodeAddr=$(node_ip "$n") NodeHostname=$n CPUs=$MN_CPUS RealMemory=$mem State=UNKNOWN"
  done >> "$MN_CONF.new"
  cat >> "$MN_CONF.new" <<CONF
# preemption, as on the single-host cluster (tests/test_preempt.py): a job of partition urgent
# takes CPUs from the others' jobs after their GraceTime
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=short Nodes=ALL Default=NO MaxTime=01:00:00 State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10
CONF
  install_if_changed "$MN_CONF.new" "$MN_CONF" || true
}

# ------------------------------------------------------------------ HTCondor (isolated)
# Each condor machine runs the chroot's daemons inside its own namespaces, with its own config
# ($MN_ETC/condor/M bound over the chroot's /etc/condor) and state ($MN_STATE/condor/M over
# /var/lib/condor). Users on the login machine use condor-up.sh's host-side tools with
# CONDOR_CONFIG=$MN_ETC/condor/client.conf.
CONDOR_UID=9618
condor_machines() { [ "$MN_CONDOR_NODES" -gt 0 ] && { echo ctl; echo login; mn_condor_nodes; }; return 0; }
condor_daemons() { case "$1" in ctl) echo "COLLECTOR, NEGOTIATOR" ;; login) echo SCHEDD ;; *) echo STARTD ;; esac; }
condor_master_pid() { cat "$MN_STATE/condor/$1/local/run/master.pid" 2>/dev/null; }
condor_tool() {  # condor_tool TOOL ARGS...: a client tool on the login machine
  on login env -i PATH=/usr/bin:/bin CONDOR_CONFIG="$MN_ETC/condor/client.conf" \
    "$MN_CONDOR_ROOT/host/bin/condor-host-exec" "$@"
}
condor_startds() { condor_tool condor_status -af Machine 2>/dev/null | sort -u | wc -l; }
condor_healthy() {
  local m
  for m in $(condor_machines); do pid_live "$(condor_master_pid "$m")" || return 1; done
  [ "$MN_CONDOR_NODES" = 0 ] || [ "$(condor_startds)" = "$MN_CONDOR_NODES" ]
}
write_condor_config() {
  local m=$1 d=$MN_ETC/condor/$1
  mkdir -p "$d/config.d"
  cp "$MN_CONDOR_ROOT/etc/condor/condor_config" "$d/condor_config"
  cat > "$d/config.d/50-$MN_TAG.conf" <<CONF
# written by shoal ci/clusters/slurm-multinode-up.sh ($MN_CLUSTER): machine $m, nothing shared
CONDOR_HOST = $MN_CTL_IP
NETWORK_INTERFACE = $(machine_ip "$m")
BIND_ALL_INTERFACES = False
ENABLE_IPV6 = False
DAEMON_LIST = MASTER, $(condor_daemons "$m")
LOCAL_DIR = /var/lib/condor/local
RUN = \$(LOCAL_DIR)/run
LOG = \$(LOCAL_DIR)/log
LOCK = \$(LOCAL_DIR)/lock
SPOOL = \$(LOCAL_DIR)/spool
EXECUTE = \$(LOCAL_DIR)/execute
CRED_STORE_DIR = \$(LOCAL_DIR)/cred_dir
# one user namespace, but every machine its own filesystem: jobs must transfer their files
UID_DOMAIN = $MN_TAG
TRUST_UID_DOMAIN = True
FILESYSTEM_DOMAIN = $m.$MN_TAG
# a test pool on a private network: any peer may talk; users are who they say (FS on login)
SEC_DEFAULT_AUTHENTICATION = OPTIONAL
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, CLAIMTOBE
SEC_CLIENT_AUTHENTICATION_METHODS = FS, CLAIMTOBE
SEC_DEFAULT_ENCRYPTION = OPTIONAL
SEC_DEFAULT_INTEGRITY = OPTIONAL
SEC_FS_ENFORCE_CHANNEL_BINDING = False
ALLOW_READ = *
ALLOW_WRITE = *
ALLOW_DAEMON = *
ALLOW_NEGOTIATOR = *
ALLOW_ADMINISTRATOR = *
ALLOW_OWNER = *
QUEUE_SUPER_USERS = root, condor
ENABLE_KERNEL_TUNING = False
LINUX_KERNEL_TUNING_SCRIPT =
MOUNT_UNDER_SCRATCH =
CGROUP_MEMORY_LIMIT_POLICY = none
NUM_CPUS = 4
NEGOTIATOR_INTERVAL = 1
NEGOTIATOR_MIN_INTERVAL = 0
NEGOTIATOR_CYCLE_DELAY = 0
NEGOTIATOR_UPDATE_AFTER_CYCLE = True
SCHEDD_INTERVAL = 1
SCHEDD_MIN_INTERVAL = 0
UPDATE_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
JOB_START_DELAY = 0
CLAIM_WORKLIFE = 1200
CONF
  install -d -o $CONDOR_UID -g $CONDOR_UID -m 0755 "$MN_STATE/condor/$m" "$MN_STATE/condor/$m/local"
  for sub in run log lock spool execute cred_dir; do
    install -d -o $CONDOR_UID -g $CONDOR_UID -m 0755 "$MN_STATE/condor/$m/local/$sub"
  done
}
write_condor_client_config() {
  local L=$MN_CONDOR_ROOT/var/lib/condor/local
  cat > "$MN_ETC/condor/client.conf" <<CONF
# HTCondor client tools on the login machine of $MN_CLUSTER (condor-up.sh's host-side wrappers)
CONDOR_HOST = $MN_CTL_IP
NETWORK_INTERFACE = $MN_LOGIN_IP
ENABLE_IPV6 = False
UID_DOMAIN = $MN_TAG
FILESYSTEM_DOMAIN = login.$MN_TAG
LOCAL_DIR = $L
LOG = $L/log
SPOOL = $L/spool
RUN = $L/run
LOCK = $L/lock
SCHEDD_ADDRESS_FILE = \$(SPOOL)/.schedd_address
SEC_CLIENT_AUTHENTICATION_METHODS = FS, CLAIMTOBE
SEC_FS_ENFORCE_CHANNEL_BINDING = False
CONDOR_IDS = $(id -u "$MN_USER").$(id -g "$MN_USER")
CONF
}
start_condor() {
  local m=$1 p
  p=$(condor_master_pid "$m") && pid_live "$p" && kill "$p" 2>/dev/null
  rm -f "$MN_STATE/condor/$m/local/run/master.pid"
  on "$m" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    chroot "$MN_CONDOR_ROOT" /usr/sbin/condor_master -pidfile /var/lib/condor/local/run/master.pid \
    2>"$MN_LOG/condor.$m.start.err" ||
    { show_logs "$MN_LOG/condor.$m.start.err" "$MN_STATE/condor/$m/local/log/MasterLog"; die "condor_master on $m failed"; }
}

# ------------------------------------------------------------------ smoke test
# a job on every node writes its hostname into the shared volume; the login machine reads it back
smoke_multinode() {
  local d=$MN_WORK/.smoke-$$ n out nodes
  nodes=$(mn_nodes | paste -sd,)
  as_user() { on login runuser -u "$MN_USER" -- env -i HOME="/home/$MN_USER" PATH=/usr/bin:/bin SLURM_CONF="$MN_CONF" "$@"; }
  as_user mkdir -p "$d"
  out=$(as_user timeout 60 srun -D "$d" -w "$nodes" -N "$MN_NODES" --ntasks-per-node=1 -t 1 \
        sh -c 'echo "$(hostname) $(id -un) $(stat -f -c %T .)" > "$(hostname)"' 2>&1) ||
    { show_logs "$MN_LOG/slurm/slurmctld.log"; die "smoke job failed: $out"; }
  for n in $(mn_nodes); do
    out=$(as_user cat "$d/$n" 2>&1) || die "smoke: $n's file is not visible on the login machine: $out"
    [ "$out" = "$n $MN_USER fuseblk" ] || die "smoke: $n wrote '$out' (want '$n $MN_USER fuseblk')"
  done
  as_user rm -rf "$d"
  # isolation: nodes reach each other directly and nothing outside; /tmp and the bricks are private
  local n1 n2; n1=$(mn_nodes | head -1); n2=$(mn_nodes | sed -n 2p)
  on "$n1" ip route get "$(node_ip "$n2")" | grep -q "dev eth0" || die "smoke: $n1 does not route to $n2 over eth0"
  if on "$n1" ip route get 1.1.1.1 >/dev/null 2>&1; then die "smoke: $n1 has a route out of the cluster"; fi
  on "$n1" sh -c "echo private > /tmp/.shoal-mn-smoke"
  for m in "$n2" login; do
    if on "$m" test -e /tmp/.shoal-mn-smoke; then die "smoke: $n1's /tmp is visible on $m"; fi
  done
  on "$n1" rm -f /tmp/.shoal-mn-smoke
  if on "$n1" test -e "$MN_BRICKS/shared"; then die "smoke: the brick is visible on $n1"; fi
  log "smoke: a job on each of $nodes wrote to $MN_WORK, read back on login; /tmp and bricks private"
}

# isolated: a job on every Slurm node and an HTCondor job on every execute node write a file into
# their /tmp and home and connect to a listener on the login machine; the files are on no other
# machine, and nothing routes outside the hub's subnet
smoke_isolated() {
  local n m out port=29417 d
  as_user() { on "$1" runuser -u "$MN_USER" -- env -i HOME="/home/$MN_USER" PATH=/usr/bin:/bin SLURM_CONF="$MN_CONF" "${@:2}"; }
  # the driver's host is reachable over TCP: a one-line listener on login that echoes who called
  on login runuser -u "$MN_USER" -- timeout 120 python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$MN_LOGIN_IP', $port)); s.listen(16)
open('/tmp/.iso-listener', 'w').write('up')
seen = []
while len(seen) < $((MN_NODES + MN_CONDOR_NODES)):
    c, _ = s.accept(); seen.append(c.recv(64).decode()); c.close()
open('/tmp/.iso-seen', 'w').write(' '.join(sorted(seen)))
" &
  local lp=$!
  wait_for 10 on login test -e /tmp/.iso-listener || die "smoke: the listener on login did not start"
  local probe="echo \$(hostname) > /tmp/.iso-smoke; echo \$(hostname) > /home/$MN_USER/.iso-smoke; exec 3<>/dev/tcp/$MN_LOGIN_IP/$port; printf '%s' \$(hostname) >&3"
  for n in $(mn_nodes); do
    out=$(as_user login timeout 60 srun -w "$n" -N1 -t 1 bash -c "$probe" 2>&1) || die "smoke: job on $n failed: $out"
  done
  if [ "$MN_CONDOR_NODES" -gt 0 ]; then
    # HTCondor jobs also prove file transfer both ways: the job reads a token that came with it
    # (transfer_input_files), must not see the submit dir or the checkout at their login paths,
    # and writes a result into its sandbox that comes back to the submit dir (renamed per node)
    local token=$RANDOM$RANDOM$$
    d=$(as_user login mktemp -d /tmp/iso-condor.XXXXXX)
    echo "$token" | as_user login sh -c "cat > $d/token"
    printf '#!/bin/bash\n%s\nif [ -e %s ] || [ -e %s ]; then echo "sees the submit machine" > result; exit 3; fi\necho "$(hostname) $(cat token)" > result\n' \
      "$probe" "$d/token" "$REPO/ci" | as_user login sh -c "cat > $d/job.sh && chmod +x $d/job.sh"
    for n in $(mn_condor_nodes); do
      printf 'executable = job.sh\noutput = out.%s\nerror = err.%s\nlog = events.log\nshould_transfer_files = YES\nwhen_to_transfer_output = ON_EXIT\ntransfer_input_files = token\ntransfer_output_files = result\ntransfer_output_remaps = "result = result.%s"\nrequirements = Machine == "%s"\nqueue\n' "$n" "$n" "$n" "$n" |
        as_user login sh -c "cat > $d/$n.sub"
      out=$(on login runuser -u "$MN_USER" -- env -i HOME="/home/$MN_USER" PATH=/usr/bin:/bin CONDOR_CONFIG="$MN_ETC/condor/client.conf" \
        sh -c "cd $d && $MN_CONDOR_ROOT/host/bin/condor-host-exec condor_submit $n.sub" 2>&1) || die "smoke: condor_submit for $n: $out"
    done
    on login runuser -u "$MN_USER" -- env -i PATH=/usr/bin:/bin CONDOR_CONFIG="$MN_ETC/condor/client.conf" \
      sh -c "cd $d && $MN_CONDOR_ROOT/host/bin/condor-host-exec condor_wait -wait 120 events.log" >/dev/null 2>&1 ||
      { show_logs "$MN_STATE/condor/login/local/log/SchedLog" "$MN_STATE/condor/c1/local/log/StartLog"; die "smoke: HTCondor jobs did not finish"; }
    for n in $(mn_condor_nodes); do
      out=$(on login cat "$d/result.$n" 2>&1) || die "smoke: no output of the HTCondor job on $n came back by file transfer: $out"
      [ "$out" = "$n $token" ] || die "smoke: the HTCondor job on $n returned '$out' (want '$n $token')"
    done
    as_user login rm -rf "$d"
  fi
  wait_for 15 on login test -e /tmp/.iso-seen || die "smoke: not every node reached login over TCP"
  wait "$lp" 2>/dev/null || true
  out=$(on login cat /tmp/.iso-seen); on login rm -f /tmp/.iso-seen /tmp/.iso-listener
  [ "$out" = "$( (mn_nodes; mn_condor_nodes) | sort | paste -sd' ')" ] || die "smoke: login heard from '$out'"
  for n in $(mn_nodes) $(mn_condor_nodes); do
    [ "$(on "$n" cat /tmp/.iso-smoke 2>/dev/null)" = "$n" ] || die "smoke: the job on $n left no file in its /tmp"
    for m in login $(mn_nodes) $(mn_condor_nodes); do
      [ "$m" = "$n" ] && continue
      if [ "$(on "$m" cat /tmp/.iso-smoke "/home/$MN_USER/.iso-smoke" 2>/dev/null | grep -c "^$n$")" != 0 ]; then
        die "smoke: $n's file is visible on $m"
      fi
    done
  done
  for n in $(mn_nodes) $(mn_condor_nodes); do on "$n" rm -f /tmp/.iso-smoke "/home/$MN_USER/.iso-smoke"; done
  on n1 ip route get "$MN_LOGIN_IP" | grep -q "dev eth0" || die "smoke: n1 does not route to login over eth0"
  if on n1 ip route get 1.1.1.1 >/dev/null 2>&1; then die "smoke: n1 has a route out of the cluster"; fi
  if on n1 test -e "$REPO/ci"; then die "smoke: the checkout is visible on n1"; fi
  log "smoke: jobs on $( (mn_nodes; mn_condor_nodes) | paste -sd, ) reached login over TCP; /tmp and homes private; HTCondor file transfer in and out, submit dir unseen"
}

# ------------------------------------------------------------------ main
mkdir -p "$MN_ETC" "$MN_STATE" "$MN_LOG" "$NS_RUN"
[ "$MN_GLUSTER" = 0 ] || mkdir -p "$MN_BRICKS" "$MN_LOG/gluster" "$MN_SHARED" "$MN_SCRATCH"
if [ ! -s "$MN_ETC/munge.key" ]; then
  mungekey --create --keyfile="$MN_ETC/munge.key"
  chown munge:munge "$MN_ETC/munge.key"; chmod 0400 "$MN_ETC/munge.key"
fi
write_hosts
write_slurm_conf
if [ "$MN_CONDOR_NODES" -gt 0 ]; then
  for m in $(condor_machines); do write_condor_config "$m"; done
  write_condor_client_config
fi
if [ "${SHOAL_CLUSTER_FORCE_SMOKE:-0}" != 1 ] && healthy; then
  log "already up and healthy"
  echo "$ENV_LINE"; exit 0
fi

if [ "$(cat "$STAMP" 2>/dev/null)" != "$STAMP_WANT" ] && ns_exists ctl; then
  log "layout or scripts changed: rebuilding"
  MN_LAYOUT=$MN_LAYOUT "$HERE/slurm-multinode-down.sh" >&2
  for m in $(condor_machines); do write_condor_config "$m"; done
fi
mkdir -p "$MN_ETC" "$MN_STATE" "$MN_LOG" "$NS_RUN"
[ "$MN_GLUSTER" = 0 ] || mkdir -p "$MN_BRICKS" "$MN_LOG/gluster" "$MN_SHARED" "$MN_SCRATCH"
network
rebuilt=0
if [ "$MN_GLUSTER" = 1 ]; then
  # heal injected faults: cut links (network() set them up), a stopped server, a full volume
  # the pids fs-stop noted first (a scan can block while they are stopped), then any other
  fs_cont_noted >/dev/null
  ns_kill fs CONT
  if ! fs_healthy; then
    for m in $(mn_clients) ctl fs; do ns_stop "$m" 5; done
    start_fs; rebuilt=1
  fi
  if [ -e "$MN_STATE/scratch-filled" ] && [ $rebuilt = 0 ] && holder_ready login; then
    on login rm -f "$(cat "$MN_STATE/scratch-filled")" || true
  fi
  rm -f "$MN_STATE/scratch-filled"
fi
ctl_healthy || { start_ctl; rebuilt=1; }
if [ $rebuilt = 1 ] || ! client_healthy login; then start_client login; wait_client login; fi
restart=()
for n in $(mn_nodes) $(mn_condor_nodes); do
  if [ $rebuilt = 1 ] || ! client_healthy "$n"; then start_client "$n"; restart+=("$n"); fi
done
for n in "${restart[@]}"; do wait_client "$n"; done
for n in $(mn_nodes); do alive_pidfile "$NS_RUN/slurmd.$n.pid" || start_slurmd "$n"; done
for m in $(condor_machines); do pid_live "$(condor_master_pid "$m")" || start_condor "$m"; done
log "machines up: $(mn_machines | tr '\n' ' ')"

# nodes register; resume those an earlier fault left down or drained
end=$(( $(date +%s) + 60 ))
until nodes_idle; do
  for n in $(mn_nodes); do
    case "$(sinfo_states | awk -v n="$n" '$1 == n {print $2; exit}')" in
      *drain*|*down*|*fail*) SLURM_CONF=$MN_CONF on ctl scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true ;;
    esac
  done
  [ "$(date +%s)" -lt "$end" ] || { show_logs "$MN_LOG/slurm/slurmctld.log"; die "nodes not idle: $(sinfo_states | tr '\n' ' ')"; }
  sleep 0.3
done
log "nodes: $(sinfo_states | tr '\n' ' ')"
if [ "$MN_CONDOR_NODES" -gt 0 ]; then
  wait_for 60 sh -c "[ \"\$(MN_LAYOUT=$MN_LAYOUT $HERE/slurm-multinode-exec.sh --user $MN_USER -- condor_status -af Machine 2>/dev/null | sort -u | wc -l)\" = $MN_CONDOR_NODES ]" ||
    { show_logs "$MN_STATE"/condor/*/local/log/{CollectorLog,StartLog,MasterLog}; die "the HTCondor execute nodes did not join the pool"; }
  log "HTCondor: $(condor_startds) execute nodes"
fi
smoke_$MN_LAYOUT
echo "$STAMP_WANT" > "$STAMP"
echo "$ENV_LINE"
