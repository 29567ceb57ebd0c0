#!/usr/bin/env bash
# condor-up.sh — start a real single-node HTCondor pool on a Debian 12 host. bookworm has no
# HTCondor, so the daemons run in a debootstrap'ed Debian trixie chroot (condor 23.x + minicondor).
# /proc /sys /dev /tmp /work /home are bound into the chroot so paths are the same on both sides.
# Host-side client tools (/usr/local/bin/condor_submit, condor_q, ...) run the chroot's binaries
# through the chroot's own dynamic loader, as the calling user.
#
# HTCondor never runs jobs as root: jobs run as the submitting (unprivileged) user, which must
# exist with the same uid inside the chroot (host users with uid 1000-59999 are copied in).
# root on the host is mapped to $SHOAL_USER for authentication.
# Idempotent: a second run with healthy daemons is a quick no-op.
#
# Knobs: SHOAL_CONDOR_ROOT [/var/lib/shoal-condor]   where the chroot lives (outside the repo)
#        SHOAL_CONDOR_CPUS [16]   slots advertised (more than the real cores, on purpose)
#        SHOAL_CONDOR_SLOTS [hybrid]  hybrid: CPUS-4 static 1-cpu slots + one 4-cpu partitionable
#                                 slot; static: CPUS 1-cpu slots; partitionable: one p-slot
#        SHOAL_CONDOR_EXTRA_BINDS ["/root/.pyenv /opt/shoal-python" if present]  host dirs bound read-only at the
#                                 same path (e.g. a Python installation the jobs use)
#        SHOAL_CONDOR_MIRROR      Debian mirror (default: the host's own)
#        SHOAL_CONDOR_BIN [/usr/local/bin]   where the host wrappers go
#        SHOAL_CLUSTER_FORCE_SMOKE=1
# Last line of stdout: the environment a client needs.
set -euo pipefail
LOG_TAG=condor-up
. "$(dirname "$(readlink -f "$0")")/lib.sh"
need_root

R=${SHOAL_CONDOR_ROOT:-/var/lib/shoal-condor}
SUITE=trixie
CPUS=${SHOAL_CONDOR_CPUS:-16}
SLOTS=${SHOAL_CONDOR_SLOTS:-hybrid}
HOST_BIN=${SHOAL_CONDOR_BIN:-/usr/local/bin}
if [ -z "${SHOAL_CONDOR_EXTRA_BINDS+x}" ]; then
  SHOAL_CONDOR_EXTRA_BINDS=""; [ -d /root/.pyenv ] && SHOAL_CONDOR_EXTRA_BINDS=/root/.pyenv
  # the job interpreter made by condor-python.sh (readable by the job user)
  [ -d /opt/shoal-python ] && SHOAL_CONDOR_EXTRA_BINDS="$SHOAL_CONDOR_EXTRA_BINDS /opt/shoal-python"
fi
CONDOR_UID=9618                 # the chroot's "condor" daemon account
HOSTCONF=$R/host/condor_config
OKSTAMP=/run/shoal-condor-ok
LOGDIR=$R/var/log/condor
ENV_LINE="export CONDOR_CONFIG=$HOSTCONF PATH=$HOST_BIN:\$PATH"

host_mirror() {
  { awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null
    awk '$1 == "deb" {print $2}' /etc/apt/sources.list 2>/dev/null || true; } |
    grep -E '/debian/?$' | grep -v security | head -1 || true
}
# run a command inside the chroot with a clean environment
inroot() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$R" "$@"; }
# pid of condor_master if it runs inside our chroot
master_pid() {
  local p; p=$(cat "$R/run/condor/master.pid" 2>/dev/null) || return 1
  [ -n "$p" ] && [ "$(readlink "/proc/$p/root" 2>/dev/null)" = "$R" ] && echo "$p"
}
BINDS="/dev /dev/pts /dev/shm /tmp /work /home"
mounted_all() {
  local d
  for d in proc sys $BINDS $SHOAL_CONDOR_EXTRA_BINDS; do
    d=${d#/}; [ -d "/$d" ] || continue
    mountpoint -q "$R/$d" || return 1
  done
}
stamp_value() { echo "$(master_pid) $CPUS $SLOTS $SHOAL_CONDOR_EXTRA_BINDS $(stat -c %a /root) $(cat "$0" "$CLUSTERS_DIR/lib.sh" | md5sum | cut -c1-12)"; }

ensure_hostname
ensure_shoal_user

# ---------------------------------------------------------------- fast path
if [ "${SHOAL_CLUSTER_FORCE_SMOKE:-0}" != 1 ] && [ -s "$OKSTAMP" ] && master_pid >/dev/null &&
   [ "$(cat "$OKSTAMP")" = "$(stamp_value)" ] && mounted_all && [ -x "$HOST_BIN/condor_q" ] &&
   CONDOR_CONFIG=$HOSTCONF timeout 20 "$HOST_BIN/condor_q" -totals >/dev/null 2>&1; then
  log "already up and healthy"
  echo "$ENV_LINE"
  exit 0
fi
rm -f "$OKSTAMP"

# ---------------------------------------------------------------- root filesystem
if [ ! -e "$R/.shoal-rootfs-ok" ]; then
  apt_install $CONDOR_HOST_PKGS
  MIRROR=${SHOAL_CONDOR_MIRROR:-$(host_mirror)}
  [ -n "$MIRROR" ] || die "no Debian mirror in the host's apt sources; set SHOAL_CONDOR_MIRROR"
  if grep -q " $R/" /proc/mounts; then die "there are mounts under $R: run condor-down.sh first"; fi
  if [ ! -x "$R/usr/bin/apt-get" ]; then
    log "debootstrap --variant=minbase $SUITE $R ($MIRROR)"
    rm -rf --one-file-system "$R"
    debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" > /tmp/shoal-condor-debootstrap.log 2>&1 ||
      { tail -n 25 /tmp/shoal-condor-debootstrap.log >&2; die "debootstrap failed"; }
  fi
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod 0755 "$R/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  # fixed id for the daemon account, created before the package would pick one
  inroot getent group condor >/dev/null || inroot groupadd -r -g $CONDOR_UID condor
  inroot getent passwd condor >/dev/null ||
    inroot useradd -K SYS_UID_MAX=$CONDOR_UID -r -u $CONDOR_UID -g condor -d /var/lib/condor -s /usr/sbin/nologin -c "HTCondor Daemons" condor
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  log "apt-get install condor minicondor (in the chroot)"
  { inroot apt-get update -q &&
    inroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends condor minicondor; } \
    > /tmp/shoal-condor-apt.log 2>&1 || { tail -n 30 /tmp/shoal-condor-apt.log >&2; die "apt-get in the chroot failed"; }
  inroot apt-get clean
  touch "$R/.shoal-rootfs-ok"
fi

# ---------------------------------------------------------------- accounts (same ids inside)
cp /etc/hosts "$R/etc/hosts"
getent passwd | awk -F: -v u="$SHOAL_USER" '($3 >= 1000 && $3 < 60000) || $1 == u' |
while IFS=: read -r name _ uid gid _ home _; do
  inroot getent passwd "$name" >/dev/null && continue
  inroot getent passwd "$uid" >/dev/null && { log "uid $uid taken in the chroot; not copying user $name"; continue; }
  gname=$(getent group "$gid" | cut -d: -f1)
  if [ -n "$gname" ] && ! inroot getent group "$gname" >/dev/null && ! inroot getent group "$gid" >/dev/null; then
    inroot groupadd -g "$gid" "$gname"
  fi
  inroot useradd -M -d "$home" -u "$uid" -g "$gid" -s /bin/sh "$name"
done
SUID=$(id -u "$SHOAL_USER"); SGID=$(id -g "$SHOAL_USER")
# the chroot's /root is as traversable as the host's (matters for read-only binds under /root)
chmod "$(stat -c %a /root)" "$R/root"

# ---------------------------------------------------------------- mounts
bind() {
  local src=$1 dst=$R$1
  [ -d "$src" ] || return 0
  mountpoint -q "$dst" && return 0
  mkdir -p "$dst"
  mount --bind "$src" "$dst"
  [ "${2:-}" = ro ] && mount -o remount,bind,ro "$dst"
  return 0
}
mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
mountpoint -q "$R/sys" || mount -t sysfs sysfs "$R/sys"
for d in $BINDS; do bind "$d"; done
for d in $SHOAL_CONDOR_EXTRA_BINDS; do bind "$d" ro; done

# ---------------------------------------------------------------- daemon configuration
install -d -o $CONDOR_UID -g $CONDOR_UID -m 0775 "$R/run/condor" "$R/run/lock/condor"
inroot install -d -o condor -g condor -m 0755 /var/spool/condor /var/lib/condor/execute /var/log/condor
CFG=$R/etc/condor/config.d/50-shoal.conf
NEW=$(mktemp)
cat > "$NEW" <<CONF
# written by shoal ci/clusters/condor-up.sh — single-node test pool in a chroot
NUM_CPUS = $CPUS
# /proc is the host's: never let condor_master retune the host kernel
ENABLE_KERNEL_TUNING = False
LINUX_KERNEL_TUNING_SCRIPT =
# jobs must see the real, shared /tmp (and mount namespaces fail in a chroot)
MOUNT_UNDER_SCRATCH =
ENABLE_IPV6 = False
CGROUP_MEMORY_LIMIT_POLICY = none
# host root authenticates (FS) as $SHOAL_USER: HTCondor runs no root jobs
CERTIFICATE_MAPFILE = /etc/condor/condor_mapfile
QUEUE_SUPER_USERS = root, condor, $SHOAL_USER
# fast turnaround for a tiny test pool
NEGOTIATOR_INTERVAL = 1
NEGOTIATOR_MIN_INTERVAL = 0
NEGOTIATOR_CYCLE_DELAY = 0
NEGOTIATOR_UPDATE_AFTER_CYCLE = True
# a just-released slot's ad is stale for a moment: prefer a random free static slot
NEGOTIATOR_PRE_JOB_RANK = (1000000 * (RemoteOwner =?= UNDEFINED)) - (100000 * Cpus) + random(1000)
SCHEDD_INTERVAL = 1
SCHEDD_MIN_INTERVAL = 0
SCHEDD_JOB_QUEUE_LOG_FLUSH_DELAY = 1
UPDATE_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
JOB_START_DELAY = 0
JOB_START_COUNT = $CPUS
CLAIM_WORKLIFE = 1200
SHADOW_WORKLIFE = 3600
CONF
case "$SLOTS" in
  hybrid) printf 'SLOT_TYPE_1 = cpus=1, mem=1536\nNUM_SLOTS_TYPE_1 = %d\nSLOT_TYPE_2 = cpus=4, mem=auto\nSLOT_TYPE_2_PARTITIONABLE = True\nNUM_SLOTS_TYPE_2 = 1\n' $((CPUS - 4)) >> "$NEW" ;;
  static) printf 'SLOT_TYPE_1 = cpus=1\nNUM_SLOTS_TYPE_1 = %d\n' "$CPUS" >> "$NEW" ;;
  partitionable) ;;
  *) die "SHOAL_CONDOR_SLOTS must be hybrid, static or partitionable" ;;
esac
CHANGED=0
install_if_changed "$NEW" "$CFG" && CHANGED=1
printf 'FS root %s\nFS (.*) \\1\n' "$SHOAL_USER" > "$R/etc/condor/condor_mapfile"

# ---------------------------------------------------------------- host-side clients
mkdir -p "$R/host/bin"
cat > "$HOSTCONF" <<CONF
# host-side client config for the chroot pool at $R (written by condor-up.sh);
# also works for the PyPI htcondor bindings
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
ENABLE_IPV6 = False
UID_DOMAIN = $(hostname)
FILESYSTEM_DOMAIN = $(hostname)
LOCAL_DIR = $R/var
LOG = $R/var/log/condor
SPOOL = $R/var/spool/condor
RUN = $R/run/condor
LOCK = $R/run/lock/condor
SCHEDD_ADDRESS_FILE = \$(SPOOL)/.schedd_address
COLLECTOR_ADDRESS_FILE = \$(LOG)/.collector_address
SEC_CLIENT_AUTHENTICATION_METHODS = FS
# newer (PyPI 24+/25.x) clients bind FS auth to the server's address; the 23.x schedd does not
SEC_FS_ENFORCE_CHANNEL_BINDING = False
# the host has no "condor" account
CONDOR_IDS = $SUID.$SGID
CONF
# let the bindings find it without CONDOR_CONFIG, unless the host has its own HTCondor config
if [ ! -e /etc/condor/condor_config ] || grep -q 'shoal ci/clusters' /etc/condor/condor_config; then
  mkdir -p /etc/condor
  printf '# written by shoal ci/clusters/condor-up.sh\ninclude : %s\n' "$HOSTCONF" > /etc/condor/condor_config
fi
# one wrapper, linked under each tool's name: runs the chroot's binary with the chroot's loader
# and libraries, on the host, as the calling user, in the calling directory
cat > "$R/host/bin/condor-host-exec" <<WRAP
#!/bin/sh
# written by shoal ci/clusters/condor-up.sh: run the HTCondor tool of the chroot $R on the host
R=$R
tool=\${0##*/}
[ "\$tool" = condor-host-exec ] && { tool=\$1; shift; }
export CONDOR_CONFIG=\${CONDOR_CONFIG:-\$R/host/condor_config}
bin=\$R/usr/bin/\$tool; [ -x "\$bin" ] || bin=\$R/usr/sbin/\$tool
[ -x "\$bin" ] || { echo "\$tool: not found in \$R" >&2; exit 127; }
exec "\$R/lib64/ld-linux-x86-64.so.2" --argv0 "\$tool" \\
  --library-path "\$R/usr/lib/x86_64-linux-gnu:\$R/usr/lib:\$R/lib/x86_64-linux-gnu" "\$bin" "\$@"
WRAP
chmod 0755 "$R/host/bin/condor-host-exec"
# (ELF tools only; condor_hold/release/vacate_job/suspend/continue are links to condor_rm:
# --argv0 keeps the name)
TOOLS="condor_submit condor_q condor_rm condor_hold condor_release condor_history condor_status
       condor_wait condor_qedit condor_config_val condor_ping condor_reschedule condor_userprio
       condor_version condor_tail condor_vacate_job condor_suspend condor_continue"
mkdir -p "$HOST_BIN"
for t in $TOOLS; do ln -sfn "$R/host/bin/condor-host-exec" "$HOST_BIN/$t"; done

# ---------------------------------------------------------------- daemons
if master_pid >/dev/null; then
  if [ "$CHANGED" = 1 ]; then log "config changed: condor_reconfig"; inroot condor_reconfig >/dev/null; fi
else
  log "starting condor_master (in the chroot)"
  (cd / && inroot /usr/sbin/condor_master -pidfile /run/condor/master.pid 2>/tmp/shoal-condor-start.err) ||
    { show_logs /tmp/shoal-condor-start.err "$LOGDIR/MasterLog"; die "condor_master failed to start"; }
fi
pool_up() {
  [ "$(inroot condor_status -af Name 2>/dev/null | wc -l)" -ge 1 ] && "$HOST_BIN/condor_q" -totals
}
wait_for 90 pool_up || { show_logs "$LOGDIR/MasterLog" "$LOGDIR/SchedLog" "$LOGDIR/StartLog" "$LOGDIR/CollectorLog"; die "pool did not come up"; }
log "pool: $(inroot condor_status -af Name | wc -l) slots, $(inroot condor_version | head -1 | awk '{print $2}')"

# ---------------------------------------------------------------- smoke test as $SHOAL_USER, from the host
D=$(runuser -u "$SHOAL_USER" -- mktemp -d /tmp/condor-smoke.XXXXXX)
printf '#!/bin/sh\necho ok-$(id -un)\n' > "$D/job.sh"; chmod 0755 "$D/job.sh"
printf 'executable = job.sh\noutput = out\nerror = err\nlog = events.log\nqueue\n' > "$D/job.sub"
chown -R "$SHOAL_USER:" "$D"
sub=$(cd "$D" && runuser -u "$SHOAL_USER" -- env CONDOR_CONFIG="$HOSTCONF" "$HOST_BIN/condor_submit" job.sub 2>&1) || true
(cd "$D" && runuser -u "$SHOAL_USER" -- env CONDOR_CONFIG="$HOSTCONF" "$HOST_BIN/condor_wait" -wait 90 events.log >/dev/null 2>&1) || true
got=$(cat "$D/out" 2>/dev/null || true)
if [ "$got" != "ok-$SHOAL_USER" ]; then
  echo "condor_submit: $sub" >&2; "$HOST_BIN/condor_q" -af ClusterId Owner JobStatus HoldReason >&2 || true
  show_logs "$D/events.log" "$LOGDIR/SchedLog" "$LOGDIR/StartLog" "$LOGDIR/ShadowLog"
  rm -rf "$D"; die "smoke job as $SHOAL_USER failed (output: '$got')"
fi
rm -rf "$D"
log "condor_submit works as $SHOAL_USER (jobs of host root run as $SHOAL_USER)"
stamp_value > "$OKSTAMP"
echo "$ENV_LINE"
