# shellcheck shell=bash
# lib.sh — helpers shared by the ci/clusters/*-up.sh / *-down.sh scripts (sourced, not run).
# Everything here runs as root on a Debian 12 host without systemd.

CLUSTERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHOAL_USER=${SHOAL_USER:-shoal}
SHOAL_UID=${SHOAL_UID:-2001}          # only used when the user has to be created
_T0=$(date +%s%N)

log() {
  local ms=$(( ($(date +%s%N) - _T0) / 1000000 ))
  printf '[%s %d.%03ds] %s\n' "${LOG_TAG:-cluster}" $((ms / 1000)) $((ms % 1000)) "$*" >&2
}
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

# tail of one or more log files on stderr (for failure reports)
show_logs() {
  local f
  for f in "$@"; do
    [ -r "$f" ] || continue
    printf -- '---- last lines of %s ----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}

# pid file names a live process
alive() { [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

# stop the process named by a pid file (TERM, wait up to $2 s, then KILL); no error if not running
stop_pidfile() {
  local f=$1 wait=${2:-15} name=${3:-$(basename "$1" .pid)} p i
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill "$p" 2>/dev/null || true
    for ((i = 0; i < wait * 10; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -9 "$p" 2>/dev/null || true; fi
    log "stopped $name (pid $p)"
  fi
  rm -f "$f"
}

# stop_pidfiles SECS PIDFILE...: TERM them all at once, then wait for each (KILL after SECS)
stop_pidfiles() {
  local secs=$1 f p; shift
  for f in "$@"; do
    p=$(cat "$f" 2>/dev/null) || continue
    [ -n "$p" ] && kill "$p" 2>/dev/null && log "stopping $(basename "$f" .pid) (pid $p)"
  done
  for f in "$@"; do stop_pidfile "$f" "$secs"; done
  return 0
}

# wait_for SECONDS CMD...: retry CMD every 0.2 s until it succeeds or time runs out
wait_for() {
  local secs=$1 end; shift
  end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# the short host name must resolve (daemons and clients look it up)
ensure_hostname() {
  HOST=$(hostname -s)
  if ! getent hosts "$HOST" >/dev/null; then
    echo "127.0.0.1 $HOST" >> /etc/hosts
    log "added '$HOST' to /etc/hosts"
  fi
}

# the unprivileged test user that submits jobs to all three schedulers
ensure_shoal_user() {
  if ! getent passwd "$SHOAL_USER" >/dev/null; then
    local uid=$SHOAL_UID
    while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do uid=$((uid + 1)); done
    getent group "$SHOAL_USER" >/dev/null || groupadd -g "$uid" "$SHOAL_USER"
    useradd -m -d "/home/$SHOAL_USER" -u "$uid" -g "$SHOAL_USER" -s /bin/bash -c "shoal CI submitter" "$SHOAL_USER"
    log "created user $SHOAL_USER (uid $uid)"
  fi
  local home; home=$(getent passwd "$SHOAL_USER" | cut -d: -f6)
  if [ ! -d "$home" ]; then
    install -d -m 0755 -o "$SHOAL_USER" -g "$(id -g "$SHOAL_USER")" "$home"
  fi
}

# true if every named Debian package is installed
pkgs_installed() {
  local n
  n=$(dpkg-query -W -f='${Status}\n' "$@" 2>/dev/null | grep -c 'install ok installed' || true)
  [ "$n" = "$#" ]
}

# debconf answers for gridengine (needed before its packages are installed)
preseed_gridengine() {
  local h p; h=$(hostname -s)
  for p in gridengine-common gridengine-master gridengine-client gridengine-exec; do
    printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n%s shared/gridenginemaster string %s\n' \
      "$p" "$p" "$p" "$h"
  done | debconf-set-selections
}

# apt_install PKG...: install what is missing. apt-get update runs at most once per hour (stamp),
# postinst scripts are kept from starting services by a temporary policy-rc.d.
APT_STAMP=/var/lib/apt/shoal-ci-updated
apt_install() {
  pkgs_installed "$@" && return 0
  export DEBIAN_FRONTEND=noninteractive
  local created=0 i
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# written by shoal ci/clusters: no service starts from package scripts\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d; created=1
  fi
  if [ -z "$(find "$APT_STAMP" -mmin -60 2>/dev/null)" ]; then
    log "apt-get update"
    for i in $(seq 30); do   # the lists lock has no timeout option: retry while someone else holds it
      if apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null; then touch "$APT_STAMP"; break; fi
      [ "$i" = 30 ] && { [ $created = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get update failed"; }
      sleep 5
    done
  fi
  log "apt-get install $*"
  if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" > /tmp/shoal-ci-apt.log 2>&1; then
    [ $created = 1 ] && rm -f /usr/sbin/policy-rc.d
    tail -n 30 /tmp/shoal-ci-apt.log >&2
    die "apt-get install failed (full log: /tmp/shoal-ci-apt.log)"
  fi
  [ $created = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# package sets (also used by `cluster up all` to install everything in one apt run)
SLURM_PKGS="slurm-wlm slurmctld slurmd slurm-client munge"
SGE_PKGS="gridengine-master gridengine-exec gridengine-client"
CONDOR_HOST_PKGS="debootstrap"
GLUSTER_PKGS="glusterfs-server glusterfs-client"

# install_if_changed NEW DEST [MODE]: copy when content differs; returns 0 if it changed
install_if_changed() {
  if cmp -s "$1" "$2"; then rm -f "$1"; return 1; fi
  install -m "${3:-0644}" "$1" "$2"; rm -f "$1"
  return 0
}
