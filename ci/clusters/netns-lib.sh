# shellcheck shell=bash
# netns-lib.sh — "machines" made of Linux namespaces, for the multi-node test clusters (sourced
# after lib.sh). A machine is one network namespace (`ip netns`, named) plus one long-lived
# holder process that owns the machine's private mount and UTS namespaces: everything that must
# see the machine's mounts (FUSE clients, daemons, a user's shell) is started inside the holder
# with nsenter. `ip netns exec` alone would make a fresh mount namespace without those mounts.
#
# Callers set NS_PREFIX (netns names are $NS_PREFIX-<machine>), NS_RUN (pid files) and NS_HUB
# (the machine holding the bridge that joins the others) before using these helpers.

# close_inherited_fds: daemons started from here must not keep a caller's descriptors open, e.g.
# the fd of `flock /tmp/shoal-clusters.lock` (the lock would be held as long as the cluster runs)
close_inherited_fds() {
  local fd
  for fd in $(ls /proc/$BASHPID/fd); do
    [ "$fd" -gt 2 ] && [ "$fd" != 255 ] && eval "exec $fd>&-" 2>/dev/null
  done
  return 0
}

ns_name() { echo "$NS_PREFIX-$1"; }
ns_exists() { [ -e "/run/netns/$(ns_name "$1")" ]; }

# ns_ensure MACHINE: the named network namespace, with loopback up
ns_ensure() {
  ns_exists "$1" || ip netns add "$(ns_name "$1")"
  ip -n "$(ns_name "$1")" link set lo up
}

# ns_hub_ensure BRIDGE: the hub namespace and its bridge (no address: it only forwards)
ns_hub_ensure() {
  ns_ensure "$NS_HUB"
  local hub; hub=$(ns_name "$NS_HUB")
  ip -n "$hub" link show "$1" >/dev/null 2>&1 || ip -n "$hub" link add "$1" type bridge
  ip -n "$hub" link set "$1" up
}

# ns_link MACHINE ADDR/PREFIX BRIDGE: a veth from the hub bridge (port "h-MACHINE") to the
# machine ("eth0" there). No default route: the machine reaches only the hub's subnet.
ns_link() {
  local m=$1 addr=$2 br=$3 hub ns
  hub=$(ns_name "$NS_HUB"); ns=$(ns_name "$m")
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip -n "$hub" link del "h-$m" 2>/dev/null || true
    ip -n "$hub" link add "h-$m" type veth peer name eth0 netns "$ns"
    ip -n "$ns" addr add "$addr" dev eth0
  fi
  ip -n "$hub" link set "h-$m" master "$br" up
  ip -n "$ns" link set eth0 up
}

# the hub side of a machine's link: down = the machine is cut off (a partition), up = back
ns_link_set() { ip -n "$(ns_name "$NS_HUB")" link set "h-$1" "$2"; }
ns_link_state() { ip -n "$(ns_name "$NS_HUB")" -o link show "h-$1" 2>/dev/null | grep -q 'state UP' && echo up || echo down; }

# a live, non-zombie process (killed processes linger as zombies here: PID 1 is not an init)
pid_live() {
  local st
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

holder_pidfile() { echo "$NS_RUN/holder.$1.pid"; }
holder_pid() { cat "$(holder_pidfile "$1")" 2>/dev/null; }
# the holder is set up and waiting (it execs `sleep infinity` once its mounts are in place)
holder_ready() {
  local p; p=$(holder_pid "$1") || return 1
  pid_live "$p" && [ "$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)" = "sleep infinity " ]
}

# holder_start MACHINE HOSTNAME SETUP LOGFILE: run SETUP (a shell script, in a new private mount
# and UTS namespace inside the machine's netns), then keep the namespaces alive. Returns at once;
# use holder_wait.
holder_start() {
  local m=$1 host=$2 setup=$3 logf=$4
  # nsenter --net, not `ip netns exec`: that remounts /sys without the host's /sys/fs/cgroup
  # (slurmd needs it); here the machine gets its own sysfs with the cgroup tree moved over.
  setsid nsenter --net="/run/netns/$(ns_name "$m")" unshare -m -u --propagation private \
    sh -ec "hostname $host
      mkdir -p /run/.shoal-cg-$m; mount --rbind /sys/fs/cgroup /run/.shoal-cg-$m
      mount -t sysfs sysfs /sys; mount --move /run/.shoal-cg-$m /sys/fs/cgroup; rmdir /run/.shoal-cg-$m
      $setup
      exec sleep infinity" </dev/null >"$logf" 2>&1 &
  echo $! > "$(holder_pidfile "$m")"
}

# holder_wait MACHINE SECONDS LOGFILE: until the holder is ready; on failure show its log
holder_wait() {
  local m=$1 secs=$2 logf=$3 end
  end=$(( $(date +%s) + secs ))
  until holder_ready "$m"; do
    if ! pid_live "$(holder_pid "$m")" || [ "$(date +%s)" -ge "$end" ]; then
      show_logs "$logf"; return 1
    fi
    sleep 0.05
  done
}

# on MACHINE CMD...: run CMD inside the machine (its network, mount and UTS namespaces)
on() {
  local m=$1; shift
  nsenter -t "$(holder_pid "$m")" -m -n -u --wd=/ -- "$@"
}

# live pids in a machine's network namespace (the holder, its mounts' FUSE clients, daemons, jobs)
ns_pids() {
  local p
  ns_exists "$1" || return 0
  for p in $(ip netns pids "$(ns_name "$1")" 2>/dev/null); do pid_live "$p" && echo "$p"; done
}

# ns_kill MACHINE SIGNAL: signal every process of the machine
ns_kill() {
  local p
  for p in $(ns_pids "$1"); do kill -s "$2" "$p" 2>/dev/null || true; done
}

# ns_stop MACHINE [SECS]: TERM every process of the machine, KILL what is left after SECS
ns_stop() {
  local m=$1 secs=${2:-5} i
  ns_kill "$m" TERM
  for ((i = 0; i < secs * 10; i++)); do [ -z "$(ns_pids "$m")" ] && break; sleep 0.1; done
  ns_kill "$m" KILL
  for ((i = 0; i < 50; i++)); do [ -z "$(ns_pids "$m")" ] && break; sleep 0.1; done
  rm -f "$(holder_pidfile "$m")"
}
