#!/usr/bin/env bash
# selftest.sh — end-to-end check of the test clusters (run as root after `cluster up`):
# a job as root (Slurm, SGE) and as $SHOAL_USER (all three), an array of 20, completion checked
# through machine-readable state, then the wall time of a raw 100-task array of `true`.
#   ci/clusters/selftest.sh slurm|sge|htcondor|all ...     (SHOAL_SELFTEST_N=100: array size timed)
set -euo pipefail
LOG_TAG=selftest
. "$(dirname "$(readlink -f "$0")")/lib.sh"
. "$CLUSTERS_DIR/env.sh"
need_root
N=${SHOAL_SELFTEST_N:-100}
fail() { log "FAIL: $*"; exit 1; }
as() { local who=$1; shift; runuser -u "$who" -- env PATH="$PATH" SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" CONDOR_CONFIG="$CONDOR_CONFIG" "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
# poll CMD (prints a number) every 0.5 s until it prints >= WANT, at most SECS seconds
poll_count() {
  local want=$1 secs=$2 end n; shift 2
  end=$(( $(date +%s) + secs ))
  while :; do
    n=$("$@" 2>/dev/null || true); n=${n:-0}
    [ "$n" -ge "$want" ] && return 0
    [ "$(date +%s)" -lt "$end" ] || { log "timeout: got $n of $want"; return 1; }
    sleep 0.5
  done
}
workdir() { local d; d=$(runuser -u "$1" -- mktemp -d "/tmp/selftest-$2.XXXXXX"); chmod 0755 "$d"; echo "$d"; }

# ---------------------------------------------------------------- Slurm
slurm_done() { squeue -h -r -t all -j "$1" -o '%T' | grep -c '^COMPLETED$'; }
test_slurm() {
  local who d id t
  for who in root "$SHOAL_USER"; do
    d=$(workdir "$who" slurm)
    id=$(cd "$d" && as "$who" sbatch --parsable -p short -o "$d/out" --wrap 'echo ok-$(id -un)')
    poll_count 1 60 slurm_done "$id" || fail "slurm job $id as $who"
    [ "$(cat "$d/out")" = "ok-$who" ] || fail "slurm job $id output: $(cat "$d/out")"
    log "slurm: job $id as $who COMPLETED, output ok"
    rm -rf "$d"
  done
  d=$(workdir "$SHOAL_USER" slurm)
  id=$(cd "$d" && as "$SHOAL_USER" sbatch --parsable --array=1-20 -o "$d/%a.out" --wrap 'echo $SLURM_ARRAY_TASK_ID')
  poll_count 20 120 slurm_done "$id" || fail "slurm array $id"
  [ "$(cat "$d"/*.out | sort -n | tr '\n' ' ')" = "$(seq 1 20 | tr '\n' ' ')" ] || fail "slurm array outputs"
  log "slurm: array $id of 20 as $SHOAL_USER: 20 COMPLETED (squeue -t all), outputs ok"
  rm -rf "$d"
  t=$(now)
  id=$(cd /tmp && sbatch --parsable --array=1-"$N" -o /dev/null --wrap true)
  poll_count "$N" 600 slurm_done "$id" || fail "slurm array of $N"
  log "slurm: TIMING raw array of $N x true: $(since "$t") s"
}

# ---------------------------------------------------------------- SGE
sge_in_queue() { qstat -xml -u '*' | grep -c "<JB_job_number>$1</JB_job_number>" || true; }
sge_ok_tasks() { qacct -j "$1" 2>/dev/null | grep -c '^exit_status *0' || true; }
test_sge() {
  local who d id t
  for who in root "$SHOAL_USER"; do
    d=$(workdir "$who" sge)
    printf '#!/bin/sh\necho ok-$(id -un) $NSLOTS\n' > "$d/job.sh"; chmod 0755 "$d/job.sh"
    id=$(cd "$d" && as "$who" qsub -terse -cwd -j y -o "$d/out" -pe smp 2 "$d/job.sh")
    poll_count 1 60 sge_ok_tasks "$id" || fail "sge job $id as $who"
    [ "$(cat "$d/out")" = "ok-$who 2" ] || fail "sge job $id output: $(cat "$d/out")"
    log "sge: job $id (-pe smp 2) as $who: qacct exit_status 0, output ok"
    rm -rf "$d"
  done
  d=$(workdir "$SHOAL_USER" sge)
  printf '#!/bin/sh\necho $SGE_TASK_ID\n' > "$d/task.sh"; chmod 0755 "$d/task.sh"
  id=$(cd "$d" && as "$SHOAL_USER" qsub -terse -cwd -j y -o "$d/out.\$TASK_ID" -t 1-20 "$d/task.sh" | cut -d. -f1)
  poll_count 20 120 sge_ok_tasks "$id" || fail "sge array $id"
  [ "$(sge_in_queue "$id")" = 0 ] || fail "sge array $id still in qstat -xml"
  [ "$(cat "$d"/out.* | sort -n | tr '\n' ' ')" = "$(seq 1 20 | tr '\n' ' ')" ] || fail "sge array outputs"
  log "sge: array $id of 20 as $SHOAL_USER: gone from qstat -xml, 20 x exit_status 0 in qacct, outputs ok"
  rm -rf "$d"
  t=$(now)
  id=$(cd /tmp && qsub -terse -o /dev/null -j y -b y -t 1-"$N" /bin/true | cut -d. -f1)
  poll_count 1 600 sh -c "[ \$(qstat -xml -u '*' | grep -c '<JB_job_number>$id</JB_job_number>') = 0 ] && echo 1" ||
    fail "sge array of $N"
  log "sge: TIMING raw array of $N x true: $(since "$t") s (until gone from qstat)"
}

# ---------------------------------------------------------------- HTCondor
condor_done() { condor_history -json -constraint "ClusterId == $1 && JobStatus == 4 && ExitCode == 0" -af ProcId | wc -l; }
test_condor() {
  local who d id t
  for who in "$SHOAL_USER" root; do   # root's jobs run as $SHOAL_USER (FS mapping)
    d=$(workdir "$SHOAL_USER" condor)
    printf '#!/bin/sh\necho ok-$(id -un)\n' > "$d/job.sh"; chmod 0755 "$d/job.sh"
    printf 'executable = job.sh\noutput = out\nerror = err\nlog = events.log\nqueue\n' > "$d/job.sub"
    chown -R "$SHOAL_USER:" "$d"
    id=$(cd "$d" && as "$who" condor_submit -terse job.sub | cut -d. -f1)
    (cd "$d" && as "$who" condor_wait -wait 60 events.log) >/dev/null || fail "condor job $id as $who"
    [ "$(cat "$d/out")" = "ok-$SHOAL_USER" ] || fail "condor job $id output: $(cat "$d/out")"
    grep -q '^005 ' "$d/events.log" || fail "no termination event in the job log"
    poll_count 1 30 condor_done "$id" || fail "condor job $id not in condor_history"
    log "condor: job $id submitted by $who: event log 005 + condor_history ExitCode 0, output ok"
    rm -rf "$d"
  done
  d=$(workdir "$SHOAL_USER" condor)
  printf 'executable = /bin/sh\narguments = "-c \x27echo $(Process)\x27"\noutput = out.$(Process)\nlog = events.log\nqueue 20\n' > "$d/job.sub"
  chown -R "$SHOAL_USER:" "$d"
  id=$(cd "$d" && as "$SHOAL_USER" condor_submit -terse job.sub | head -1 | cut -d. -f1)
  (cd "$d" && as "$SHOAL_USER" condor_wait -wait 120 events.log) >/dev/null || fail "condor array $id"
  [ "$(cat "$d"/out.* | sort -n | tr '\n' ' ')" = "$(seq 0 19 | tr '\n' ' ')" ] || fail "condor array outputs"
  [ "$(grep -c '^005 ' "$d/events.log")" = 20 ] || fail "condor array: not 20 termination events"
  poll_count 20 30 condor_done "$id" || fail "condor array $id in condor_history"
  log "condor: queue 20 ($id) as $SHOAL_USER: 20 x 005 events, condor_history ExitCode 0, outputs ok"
  rm -rf "$d"
  d=$(workdir "$SHOAL_USER" condor)
  printf 'executable = /bin/true\nlog = events.log\nqueue %d\n' "$N" > "$d/job.sub"
  chown -R "$SHOAL_USER:" "$d"
  t=$(now)
  (cd "$d" && as "$SHOAL_USER" condor_submit -terse job.sub >/dev/null && as "$SHOAL_USER" condor_wait -wait 600 events.log >/dev/null) ||
    fail "condor queue $N"
  log "condor: TIMING raw queue $N x /bin/true: $(since "$t") s (until condor_wait returns)"
  rm -rf "$d"
}

[ $# -gt 0 ] || set -- all
for s in "$@"; do
  case "$s" in
    all) test_slurm; test_sge; test_condor ;;
    slurm) test_slurm ;; sge) test_sge ;; htcondor|condor) test_condor ;;
    *) fail "unknown scheduler $s" ;;
  esac
done
log "all checks passed"
