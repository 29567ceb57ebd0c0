#!/usr/bin/env bash
# slurm-multinode-up.sh — a multi-node Slurm cluster on a real network filesystem, on one host:
# a GlusterFS server, a controller, a login machine and N compute nodes, each in its own network
# namespace (own address) and mount namespace (private /tmp; /home, /root and the work dirs only
# through its own GlusterFS FUSE mount). Layout: slurm-multinode-env.sh. Independent of the
# single-host Slurm of slurm-up.sh (own munged socket and key, own slurm.conf, state and logs).
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
ENV_LINE="export SHOAL_MULTINODE_SLURM_CONF=$MN_CONF"

ensure_shoal_user
apt_install $SLURM_PKGS $GLUSTER_PKGS
[ -c /dev/fuse ] || die "no /dev/fuse: the GlusterFS client needs FUSE"

# ------------------------------------------------------------------ software paths
# The Python installation and the checkout are the "site software" every machine sees from the
# host filesystem. Those under /root or /home (hidden by the Gluster homes) are bound back at the
# same path, so the venv works unchanged on every machine and for every user.
python_base() {
  local py=$VENV/bin/python
  [ -x "$py" ] || py=$(command -v python3)
  "$py" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))'
}
KEEP=""
for p in "$REPO" "$(readlink -f "$VENV" 2>/dev/null || echo "$VENV")" "$(python_base)"; do
  case "$p/" in /root/*|/home/*) ;; *) continue ;; esac
  case " $KEEP " in *" $p "*) continue ;; esac
  inside=0
  for k in $KEEP; do case "$p/" in "$k"/*) inside=1 ;; esac; done
  [ $inside = 1 ] || KEEP="$KEEP $p"
done

STAMP_WANT=$( { cat "$HERE/slurm-multinode-up.sh" "$HERE/slurm-multinode-env.sh" "$HERE/netns-lib.sh"
  echo "$KEEP $MN_NODES $MN_CPUS $MN_SCRATCH_MB $MN_PING_TIMEOUT"; } | sha1sum | cut -c1-16)
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
client_healthy() { holder_ready "$1" && mounted "$1" "$MN_SHARED" && mounted "$1" "$MN_SCRATCH"; }
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
  for m in fs $(mn_clients); do [ "$(ns_link_state "$m")" = up ] || return 1; done
  [ ! -e "$MN_STATE/scratch-filled" ] || return 1
  fs_procs_running && fs_healthy && ctl_healthy || return 1
  for m in $(mn_clients); do client_healthy "$m" || return 1; done
  for m in $(mn_nodes); do alive_pidfile "$NS_RUN/slurmd.$m.pid" || return 1; done
  nodes_idle
}

write_hosts() {
  local n
  { echo "127.0.0.1 localhost"
    echo "$MN_FS_IP mn-fs"; echo "$MN_CTL_IP mn-ctl"; echo "$MN_LOGIN_IP mn-login"
    for n in $(mn_nodes); do echo "$(node_ip "$n") $n"; done; } > "$MN_ETC/hosts.new"
  install_if_changed "$MN_ETC/hosts.new" "$MN_ETC/hosts" || true
}

network() {
  local m
  ns_hub_ensure "$MN_BRIDGE"
  for m in fs ctl login $(mn_nodes); do ns_ensure "$m"; done
  ns_link fs "$MN_FS_IP/24" "$MN_BRIDGE"
  ns_link ctl "$MN_CTL_IP/24" "$MN_BRIDGE"
  ns_link login "$MN_LOGIN_IP/24" "$MN_BRIDGE"
  for m in $(mn_nodes); do ns_link "$m" "$(node_ip "$m")/24" "$MN_BRIDGE"; done
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
  holder_start ctl mn-ctl "mount --bind $MN_ETC/hosts /etc/hosts" "$MN_LOG/holder.ctl.log"
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

# the script a client machine's holder runs: private scratch dirs, hidden bricks, the volumes,
# the Gluster homes, and the software paths bound back
client_setup() {
  local m=$1 i=0 p keep_stage="" keep_move=""
  for p in $KEEP; do
    keep_stage="$keep_stage
    mkdir -p /tmp/.keep/$i; mount --bind $p /tmp/.keep/$i"
    keep_move="$keep_move
    mkdir -p $p; mount --move /tmp/.keep/$i $p"
    i=$((i + 1))
  done
  local uid gid
  uid=$(id -u "$MN_USER"); gid=$(id -g "$MN_USER")
  cat <<EOF
    mount --bind $MN_ETC/hosts /etc/hosts
    mount -t tmpfs -o size=2g,mode=1777 $NS_PREFIX-tmp-$m /tmp
    mount -t tmpfs -o size=256m,mode=1777 $NS_PREFIX-shm-$m /dev/shm
    mount -t tmpfs -o size=256m,mode=1777 $NS_PREFIX-vartmp-$m /var/tmp
    $keep_stage
    mount -t tmpfs -o size=1m,mode=0755 $NS_PREFIX-nobricks $(dirname "$MN_BRICKS")
    mount -t glusterfs -o log-file=$MN_LOG/gluster/$m-shared.log $MN_FS_IP:/shared $MN_SHARED
    mount -t glusterfs -o log-file=$MN_LOG/gluster/$m-scratch.log $MN_FS_IP:/scratch $MN_SCRATCH
    if [ $m = login ]; then
      mkdir -p $MN_SHARED/home $MN_SHARED/root $MN_WORK $MN_SCRATCH/work
      chmod 0755 $MN_SHARED/home $MN_SHARED/root
      chmod 1777 $MN_WORK $MN_SCRATCH/work
      [ -d $MN_SHARED/home/$MN_USER ] || install -d -o $uid -g $gid -m 0755 $MN_SHARED/home/$MN_USER
    fi
    mount --bind $MN_SHARED/home /home
    mount --bind $MN_SHARED/root /root
    $keep_move
    rm -rf /tmp/.keep
EOF
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
  holder_wait "$1" 60 "$MN_LOG/holder.$1.log" || die "machine $1 did not start (its GlusterFS mounts?)"
  mounted "$1" "$MN_SHARED" || die "machine $1: $MN_SHARED is not a GlusterFS mount"
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
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL Default=NO MaxTime=01:00:00 State=UP
CONF
  install_if_changed "$MN_CONF.new" "$MN_CONF" || true
}

# ------------------------------------------------------------------ smoke test
# a job on every node writes its hostname into the shared volume; the login machine reads it back
smoke() {
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

# ------------------------------------------------------------------ main
mkdir -p "$MN_ETC" "$MN_STATE" "$MN_BRICKS" "$MN_LOG/gluster" "$NS_RUN" "$MN_SHARED" "$MN_SCRATCH"
if [ ! -s "$MN_ETC/munge.key" ]; then
  mungekey --create --keyfile="$MN_ETC/munge.key"
  chown munge:munge "$MN_ETC/munge.key"; chmod 0400 "$MN_ETC/munge.key"
fi
write_hosts
write_slurm_conf
if [ "${SHOAL_CLUSTER_FORCE_SMOKE:-0}" != 1 ] && healthy; then
  log "already up and healthy"
  echo "$ENV_LINE"; exit 0
fi

if [ "$(cat "$STAMP" 2>/dev/null)" != "$STAMP_WANT" ] && ns_exists fs; then
  log "layout or scripts changed: rebuilding"
  "$HERE/slurm-multinode-down.sh" >&2
fi
mkdir -p "$MN_ETC" "$MN_STATE" "$MN_BRICKS" "$MN_LOG/gluster" "$NS_RUN" "$MN_SHARED" "$MN_SCRATCH"
network
# heal injected faults: cut links (network() set them up), a stopped server, a full volume
ns_kill fs CONT
rebuilt=0
if ! fs_healthy; then
  for m in $(mn_clients) ctl fs; do ns_stop "$m" 5; done
  start_fs; rebuilt=1
fi
if [ -e "$MN_STATE/scratch-filled" ] && [ $rebuilt = 0 ] && holder_ready login; then
  on login rm -f "$(cat "$MN_STATE/scratch-filled")" || true
fi
rm -f "$MN_STATE/scratch-filled"
ctl_healthy || start_ctl
if [ $rebuilt = 1 ] || ! client_healthy login; then start_client login; wait_client login; fi
restart=()
for n in $(mn_nodes); do
  if [ $rebuilt = 1 ] || ! client_healthy "$n"; then start_client "$n"; restart+=("$n"); fi
done
for n in "${restart[@]}"; do wait_client "$n"; done
for n in $(mn_nodes); do alive_pidfile "$NS_RUN/slurmd.$n.pid" || start_slurmd "$n"; done
log "machines up: fs ctl login $(mn_nodes | tr '\n' ' ')"

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
smoke
echo "$STAMP_WANT" > "$STAMP"
echo "$ENV_LINE"
