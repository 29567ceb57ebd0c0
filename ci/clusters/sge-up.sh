#!/usr/bin/env bash
# sge-up.sh — start a real single-host Grid Engine (Debian 12: gridengine 8.1.9) without systemd:
# sge_qmaster + sge_execd on this host, queue all.q (16 slots) with parallel environment smp.
# Idempotent: a second run with healthy daemons is a quick no-op.
#
# Knobs: SHOAL_SGE_SLOTS [16]   slots of all.q (more than the real cores, on purpose)
#        SHOAL_SGE_EXECD_NOFILE [4096]  fd limit of sge_execd (it closes every fd per job)
#        SHOAL_CLUSTER_FORCE_SMOKE=1    re-apply config and run the smoke job even if healthy
# Last line of stdout: the environment a client needs.
set -euo pipefail
LOG_TAG=sge-up
. "$(dirname "$(readlink -f "$0")")/lib.sh"
need_root

SLOTS=${SHOAL_SGE_SLOTS:-16}
NOFILE=${SHOAL_SGE_EXECD_NOFILE:-4096}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
# the real binaries: Debian's /usr/bin/q* wrappers run util/arch (ldd, cpp) on every call
BIN=/usr/lib/gridengine
export PATH=$BIN:$PATH
COMMON=$SGE_ROOT/$SGE_CELL/common
QSPOOL=/var/spool/gridengine/qmaster
ESPOOL=/var/spool/gridengine/execd
OKSTAMP=/run/gridengine-shoal-ci-ok
ENV_LINE="export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL PATH=$BIN:\$PATH"

ensure_hostname
ensure_shoal_user
if ! pkgs_installed $SGE_PKGS; then
  preseed_gridengine
  apt_install $SGE_PKGS
fi

execd_pidfile() { ls "$ESPOOL"/*/execd.pid 2>/dev/null | head -1 || true; }
pids() { cat "$QSPOOL/qmaster.pid" "$(execd_pidfile)" 2>/dev/null | tr '\n' ' '; }
stamp_value() { echo "$(pids)$SLOTS $(cat "$0" "$CLUSTERS_DIR/lib.sh" | md5sum | cut -c1-12)"; }
queue_ok() {  # all.q@HOST exists, has a load value (execd reports) and no state flags
  qstat -f -q "all.q@$HOST" 2>/dev/null | awk -v q="all.q@$HOST" '$1 == q && NF == 5 {ok = 1} END {exit !ok}'
}
if [ "${SHOAL_CLUSTER_FORCE_SMOKE:-0}" != 1 ] && [ -s "$OKSTAMP" ] && [ "$(cat "$OKSTAMP")" = "$(stamp_value)" ] &&
   alive "$QSPOOL/qmaster.pid" && alive "$(execd_pidfile)" && queue_ok; then
  log "already up and healthy"
  echo "$ENV_LINE"
  exit 0
fi
rm -f "$OKSTAMP"

[ -s "$COMMON/act_qmaster" ] || { echo "$HOST" > "$COMMON/act_qmaster"; chown sgeadmin:sgeadmin "$COMMON/act_qmaster"; }
# SGE compares a peer's reverse-resolved name (127.0.0.1 -> localhost) with its own name:
# declare them the same host, or the execd is "denied: host is not an execution host"
printf '%s localhost\n' "$HOST" > "$COMMON/host_aliases"

# ---------------------------------------------------------------- qmaster
install -d -o sgeadmin -g sgeadmin /var/run/gridengine
if ! alive "$QSPOOL/qmaster.pid"; then
  log "starting sge_qmaster"
  (cd / && "$BIN/sge_qmaster" 2>/tmp/shoal-sge-start.err) || { show_logs /tmp/shoal-sge-start.err "$QSPOOL/messages"; die "sge_qmaster failed to start"; }
fi
wait_for 30 qstat -f || { show_logs "$QSPOOL/messages"; die "sge_qmaster does not answer"; }

# ---------------------------------------------------------------- configuration
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# global config: qconf -sconf folds long values with '\'; join them. qconf -Mconf takes the
# config name from the file name, so the file must be called "global".
qconf -sconf global | sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta' > "$T/global"
setconf() { if grep -q "^$1 " "$T/global"; then sed -i "s|^$1 .*|$1 $2|" "$T/global"; else echo "$1 $2" >> "$T/global"; fi; }
setconf min_uid 0
setconf min_gid 0
setconf shepherd_cmd "$BIN/sge_shepherd"
setconf login_shells none
setconf load_report_time 00:00:10
setconf reporting_params "accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00"
qconf -Mconf "$T/global" >/dev/null 2>&1 || true
qconf -sconf global | grep -q "^min_uid *0$" || die "could not set the global config (min_uid 0)"

qconf -sm 2>/dev/null | grep -qx root || qconf -am root >/dev/null 2>&1
qconf -sh 2>/dev/null | grep -qx "$HOST" || qconf -ah "$HOST" >/dev/null 2>&1
qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null 2>&1
if ! qconf -sel 2>/dev/null | grep -qx "$HOST"; then
  printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
    "$HOST" > "$T/exechost"
  qconf -Ae "$T/exechost" >/dev/null 2>&1
fi
if ! qconf -shgrpl 2>/dev/null | grep -qx '@allhosts'; then
  printf 'group_name @allhosts\nhostlist %s\n' "$HOST" > "$T/allhosts"
  qconf -Ahgrp "$T/allhosts" >/dev/null 2>&1
fi

cat > "$T/smp" <<PE
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
PE
if qconf -spl 2>/dev/null | grep -qx smp; then qconf -Mp "$T/smp" >/dev/null 2>&1; else qconf -Ap "$T/smp" >/dev/null 2>&1; fi

cat > "$T/all.q" <<Q
qname                 all.q
hostlist              @allhosts
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
Q
if qconf -sql 2>/dev/null | grep -qx all.q; then qconf -Mq "$T/all.q" >/dev/null 2>&1; else qconf -Aq "$T/all.q" >/dev/null 2>&1; fi

# scheduler: run every second and right after each submit/finish (default: every 15 s)
qconf -ssconf > "$T/sched"
sed -i -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
       -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
       -e 's/^flush_finish_sec .*/flush_finish_sec 1/' \
       -e 's/^job_load_adjustments .*/job_load_adjustments NONE/' \
       -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time 0:0:0/' "$T/sched"
qconf -Msconf "$T/sched" >/dev/null 2>&1

# ---------------------------------------------------------------- execd
if ! alive "$(execd_pidfile)"; then
  log "starting sge_execd (ulimit -n $NOFILE)"
  ( cd / && cur=$(ulimit -n)
    if [ "$cur" = unlimited ] || [ "$cur" -gt "$NOFILE" ]; then ulimit -n "$NOFILE"; fi
    exec "$BIN/sge_execd" 2>/tmp/shoal-sge-start.err ) || { show_logs /tmp/shoal-sge-start.err "$QSPOOL/messages"; die "sge_execd failed to start"; }
fi
if ! wait_for 60 queue_ok; then
  qmod -c "all.q@$HOST" >/dev/null 2>&1 || true    # clear an error state left from earlier runs
  qmod -e "all.q@$HOST" >/dev/null 2>&1 || true
  wait_for 20 queue_ok || { qstat -f >&2; show_logs "$QSPOOL/messages" "$ESPOOL"/*/messages; die "queue all.q@$HOST is not usable"; }
fi
log "queue: $(qstat -f -q "all.q@$HOST" | awk -v q="all.q@$HOST" '$1 == q')"

# ---------------------------------------------------------------- smoke test (root and $SHOAL_USER)
# (a script, not `-b y sh -c '...'`: SGE re-splits the arguments of binary jobs)
for who in root "$SHOAL_USER"; do
  D=$(runuser -u "$who" -- mktemp -d /tmp/sge-smoke.XXXXXX)
  printf '#!/bin/sh\necho ok-$(id -un)\n' > "$D/job.sh"; chmod 0755 "$D/job.sh"
  jid=$(cd "$D" && runuser -u "$who" -- env SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL PATH="$PATH" \
        timeout 60 qsub -terse -sync y -cwd -j y -o "$D/out" "$D/job.sh" 2>&1 | head -1) || true
  got=$(cat "$D/out" 2>/dev/null || true)
  rm -rf "$D"
  [ "$got" = "ok-$who" ] || { qstat -f >&2; show_logs "$QSPOOL/messages" "$ESPOOL"/*/messages; die "smoke job as $who failed (qsub: $jid, output: '$got')"; }
done
log "qsub works as root and $SHOAL_USER"
stamp_value > "$OKSTAMP"
echo "$ENV_LINE"
