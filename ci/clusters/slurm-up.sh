#!/usr/bin/env bash
# slurm-up.sh — start a real single-host Slurm (Debian 12: slurm-wlm 22.05 + munge) without
# systemd or cgroups. Idempotent: a second run with healthy daemons is a quick no-op.
#
# Knobs: SHOAL_SLURM_CPUS [16]   CPUs declared for the node (more than the real cores, on purpose)
#        SHOAL_SLURM_MIN_JOB_AGE [300]  seconds finished jobs stay visible (there is no sacct)
#        SHOAL_SLURM_GRACE [30]  seconds a preempted job has to give its work back
#        SHOAL_CLUSTER_FORCE_SMOKE=1    run the smoke jobs even when everything looks healthy
# Last line of stdout: the environment a client needs.
set -euo pipefail
LOG_TAG=slurm-up
. "$(dirname "$(readlink -f "$0")")/lib.sh"
need_root

CPUS=${SHOAL_SLURM_CPUS:-16}
MIN_JOB_AGE=${SHOAL_SLURM_MIN_JOB_AGE:-300}
GRACE=${SHOAL_SLURM_GRACE:-30}
CONF=/etc/slurm/slurm.conf
OKSTAMP=/run/slurm/shoal-ci-ok
LOGS="/var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/slurm/start.err"
ENV_LINE="export SLURM_CONF=$CONF"

ensure_hostname
ensure_shoal_user
apt_install $SLURM_PKGS

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! alive /run/munge/munged.pid; then
  log "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 sh -c 'munge -n | unmunge' || { show_logs /var/log/munge/munged.log; die "munge does not work"; }

# ---------------------------------------------------------------- slurm.conf
MEM=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
install -d -o slurm -g slurm /run/slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd
NEW=$(mktemp)
cat > "$NEW" <<CONF
# written by shoal ci/clusters/slurm-up.sh — single-host test cluster, no cgroups, no accounting
ClusterName=shoal
SlurmctldHost=$HOST
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may restart after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SwitchType=switch/none
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
# no sacct here: finished jobs stay in squeue/scontrol for MinJobAge seconds
MinJobAge=$MIN_JOB_AGE
MaxJobCount=50000
MaxArraySize=1001
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# declare more CPUs than the machine has (else the node goes INVAL/DRAIN)
SlurmdParameters=config_overrides
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
# preemption (tests/test_preempt.py): a job in partition urgent takes CPUs from jobs of the other
# partitions, which get SIGTERM at once and GraceTime seconds before they are cancelled
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=$GRACE
PartitionName=short Nodes=ALL Default=NO MaxTime=01:00:00 State=UP PriorityTier=1 GraceTime=$GRACE
PartitionName=urgent Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10
CONF
CHANGED=0
if install_if_changed "$NEW" "$CONF"; then CHANGED=1; log "wrote $CONF"; fi

# ---------------------------------------------------------------- daemons
node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1; }
healthy() {
  alive /run/slurm/slurmctld.pid && alive /run/slurm/slurmd.pid &&
    scontrol ping 2>/dev/null | grep -q 'is UP' &&
    case "$(node_state)" in idle|mixed|allocated|completing) true ;; *) false ;; esac
}
pids() { cat /run/munge/munged.pid /run/slurm/slurmctld.pid /run/slurm/slurmd.pid 2>/dev/null | tr '\n' ' '; }

if [ "$CHANGED" = 0 ] && [ "${SHOAL_CLUSTER_FORCE_SMOKE:-0}" != 1 ] && [ -s "$OKSTAMP" ] &&
   [ "$(cat "$OKSTAMP")" = "$(pids)" ] && healthy; then
  log "already up and healthy"
  echo "$ENV_LINE"
  exit 0
fi
rm -f "$OKSTAMP"

if [ "$CHANGED" = 1 ]; then
  stop_pidfile /run/slurm/slurmd.pid
  stop_pidfile /run/slurm/slurmctld.pid
fi
if ! alive /run/slurm/slurmctld.pid; then
  log "starting slurmctld"
  (cd /var/lib/slurm && /usr/sbin/slurmctld 2>/var/log/slurm/start.err) || { show_logs $LOGS; die "slurmctld failed to start"; }
fi
wait_for 30 sh -c 'scontrol ping | grep -q "is UP"' || { show_logs $LOGS; die "slurmctld does not answer"; }
if ! alive /run/slurm/slurmd.pid; then
  log "starting slurmd"
  (cd /var/lib/slurm && /usr/sbin/slurmd 2>/var/log/slurm/start.err) || { show_logs $LOGS; die "slurmd failed to start"; }
fi

# wait for the node to register; resume it if an earlier config left it drained/down
end=$(( $(date +%s) + 60 ))
while :; do
  st=$(node_state || true)
  case "$st" in
    idle|mixed|allocated|completing) break ;;
    *drain*|*down*|inval*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  [ "$(date +%s)" -lt "$end" ] || { show_logs $LOGS; die "node $HOST did not become idle (state: '${st:-?}')"; }
  sleep 0.2
done
if grep -qiE 'error.*(authinfo|cred_expire)' /var/log/slurm/slurmctld.log 2>/dev/null; then
  log "WARNING: slurmctld complained about AuthInfo=cred_expire (see its log)"
fi
log "node $HOST: $(sinfo -h -n "$HOST" -o '%T cpus=%c') partitions: $(sinfo -h -o %P | tr '\n' ' ')"

# ---------------------------------------------------------------- smoke test (root and $SHOAL_USER)
for who in root "$SHOAL_USER"; do
  out=$(cd /tmp && runuser -u "$who" -- timeout 60 srun -N1 -n1 -t 1 /bin/sh -c 'echo ok-$(id -un)' 2>&1) || true
  [ "$out" = "ok-$who" ] || { show_logs $LOGS; die "smoke job as $who failed: $out"; }
done
log "srun works as root and $SHOAL_USER"
pids > "$OKSTAMP"
echo "$ENV_LINE"
