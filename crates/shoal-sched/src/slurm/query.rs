//! Reading what Slurm says: `squeue` lines, job states, wait statuses, `scontrol show config`
//! and partition records, and the end-of-job records of `sacct` and the jobcomp text log.
//! Pure functions over text, so every format is unit-tested without a cluster.

use crate::array::Element;
use std::collections::HashMap;
use std::time::Duration;

/// The squeue fields the backend asks for: element id, compact state, raw wait status, and
/// the reason last because it may contain spaces.
pub const SQUEUE_FORMAT: &str = "JobArrayID:40,StateCompact:8,exit_code:12,Reason:200";

/// What one squeue line says about one array element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLine {
    /// `ARRAYID_TASKID`, the worker id.
    pub id: String,
    pub state: String,
    /// Raw wait status as squeue prints it (`768` = exit code 3, `9` = SIGKILL).
    pub status: i32,
    pub reason: String,
}

/// Parse `squeue -h -r -O SQUEUE_FORMAT` output. Lines that are not array elements (a
/// pending array still shown as `123_[4-9]`, blank lines) are skipped.
pub fn parse_squeue(text: &str) -> Vec<JobLine> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let id = it.next()?;
            let state = it.next()?;
            let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let reason = it.collect::<Vec<_>>().join(" ");
            let (job, task) = id.split_once('_')?;
            if job.is_empty()
                || !job.bytes().all(|b| b.is_ascii_digit())
                || !task.bytes().all(|b| b.is_ascii_digit())
                || task.is_empty()
            {
                return None;
            }
            Some(JobLine {
                id: id.to_string(),
                state: state.to_string(),
                status,
                reason,
            })
        })
        .collect()
}

/// Pending reasons that mean the job will never start as submitted, and what each means.
/// (Reasons such as `PartitionDown`, `ReqNodeNotAvail` or `QOSJobLimit` clear by themselves
/// or by an administrator's hand: those jobs wait.)
const NEVER: [(&str, &str); 9] = [
    (
        "PartitionTimeLimit",
        "its time limit is longer than the partition's MaxTime",
    ),
    (
        "PartitionNodeLimit",
        "it asks for more nodes than the partition allows",
    ),
    (
        "PartitionConfig",
        "no node of the partition can give what it asks for",
    ),
    (
        "BadConstraints",
        "no node has the features (or resources) it asks for",
    ),
    ("InvalidAccount", "the account is invalid"),
    ("InvalidQOS", "the QOS is invalid"),
    (
        "AssocMaxWallDurationPerJobLimit",
        "its time limit is over the association's MaxWall",
    ),
    (
        "QOSMaxWallDurationPerJobLimit",
        "its time limit is over the QOS's MaxWall",
    ),
    ("QOSMinGRES", "it asks for fewer GRES than the QOS requires"),
];

/// Map a compact (`squeue %t`) or long (`sacct`, jobcomp) state name to an element state.
pub fn element(state: &str, status: i32, reason: &str) -> Element {
    // sacct writes "CANCELLED by 0"; the first word is the state.
    let state = state.split_whitespace().next().unwrap_or("");
    let ended = |r: &str| Element::Failed(r.to_string());
    match state {
        "PD" | "PENDING" | "CF" | "CONFIGURING" | "RQ" | "REQUEUED" | "RF" | "REQUEUE_FED" | "RH"
        | "REQUEUE_HOLD" | "RD" | "RESV_DEL_HOLD" => {
            let first = reason.split([',', ' ']).next().unwrap_or("");
            match NEVER.iter().find(|(r, _)| *r == first) {
                Some((_, why)) => Element::Unsatisfiable(format!(
                    "Slurm will never start the worker jobs as requested: they are pending with reason {reason} ({why})\nhint: change the request (partition=, time=, cpus=, memory=, constraint=, sbatch_args=)"
                )),
                None => Element::Pending(reason.to_string()),
            }
        }
        "R" | "RUNNING" | "SI" | "SIGNALING" | "RS" | "RESIZING" => Element::Running,
        "S" | "SUSPENDED" | "ST" | "STOPPED" => Element::Suspended,
        "CG" | "COMPLETING" | "SO" | "STAGE_OUT" => Element::Leaving,
        "CD" | "COMPLETED" => Element::Completed,
        "F" | "FAILED" => ended(&format!("worker job failed ({})", describe_status(status))),
        "TO" | "TIMEOUT" => ended(
            "worker job reached its time limit and was killed by Slurm\nhint: raise time=... or use shorter tasks",
        ),
        "OOM" | "OUT_OF_MEMORY" => {
            ended("worker job ran out of memory and was killed by Slurm\nhint: raise memory=...")
        }
        "NF" | "NODE_FAIL" => ended("worker job's node failed"),
        "CA" | "CANCELLED" => ended("worker job was cancelled (scancel or an administrator)"),
        "PR" | "PREEMPTED" => ended("worker job was preempted"),
        "BF" | "BOOT_FAIL" => ended("worker job's node failed to boot"),
        "DL" | "DEADLINE" => ended("worker job reached its deadline"),
        "RV" | "REVOKED" | "SE" | "SPECIAL_EXIT" => {
            ended(&format!("worker job ended in state {state}"))
        }
        // Unknown to this version: treat as still there and look again next poll.
        _ => Element::Running,
    }
}

/// Not a signal a job is killed with: Slurm's `ExitCode 0:53` for a batch job it could not
/// launch on its node (its stdout/stderr file or working directory cannot be opened there).
const LAUNCH_FAILED: i32 = 53;

/// `768` -> "exit code 3", `9` -> "killed by signal 9".
pub fn describe_status(status: i32) -> String {
    let sig = status & 0x7f;
    if sig == LAUNCH_FAILED {
        "Slurm could not launch it on its node: ExitCode 0:53, a launch failure such as an \
         --output, --error or --chdir path the node cannot open"
            .to_string()
    } else if sig != 0 {
        format!("killed by signal {sig}")
    } else {
        format!("exit code {}", (status >> 8) & 0xff)
    }
}

/// `sacct`/`scontrol` style `CODE:SIGNAL` -> a wait status.
pub fn status_from_pair(text: &str) -> i32 {
    let (code, sig) = text.split_once(':').unwrap_or((text, "0"));
    let code: i32 = code.trim().parse().unwrap_or(0);
    let sig: i32 = sig.trim().parse().unwrap_or(0);
    if sig != 0 {
        sig & 0x7f
    } else {
        (code & 0xff) << 8
    }
}

/// Site limits and facilities, from `scontrol show config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteConfig {
    pub max_array_size: usize,
    pub max_job_count: usize,
    pub min_job_age: Duration,
    /// `sacct` works only with an accounting storage.
    pub accounting: bool,
    /// The jobcomp text log, when the site writes one.
    pub jobcomp_log: Option<String>,
}

impl Default for SiteConfig {
    fn default() -> Self {
        // Slurm's own defaults.
        SiteConfig {
            max_array_size: 1001,
            max_job_count: 10000,
            min_job_age: Duration::from_secs(300),
            accounting: false,
            jobcomp_log: None,
        }
    }
}

/// `Key = Value` lines of `scontrol show config`.
pub fn parse_config(text: &str) -> SiteConfig {
    let kv: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(" = ").or_else(|| l.split_once('=')))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let num = |k: &str| {
        kv.get(k)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut c = SiteConfig::default();
    if let Some(n) = num("MaxArraySize") {
        c.max_array_size = n as usize;
    }
    if let Some(n) = num("MaxJobCount") {
        c.max_job_count = n as usize;
    }
    if let Some(n) = num("MinJobAge") {
        c.min_job_age = Duration::from_secs(n);
    }
    c.accounting = kv
        .get("AccountingStorageType")
        .is_some_and(|v| !v.is_empty() && *v != "accounting_storage/none" && *v != "(null)");
    if kv.get("JobCompType") == Some(&"jobcomp/filetxt") {
        c.jobcomp_log = kv
            .get("JobCompLoc")
            .filter(|v| v.starts_with('/'))
            .map(|v| v.to_string());
    }
    c
}

/// How many more jobs the user may submit under MaxSubmitJobs limits, from
/// `scontrol show assoc_mgr users=USER flags=assoc,qos`: each limit is printed as
/// `MaxSubmitJobs=LIMIT(USED)` (associations) or `MaxSubmitJobsPU=LIMIT(USED)` (QOS, per
/// user); an empty limit is none. The tightest one wins; None: no limit.
pub fn submit_room(assoc_mgr: &str) -> Option<(usize, String)> {
    let mut best: Option<(usize, String)> = None;
    for word in assoc_mgr.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if !matches!(
            key,
            "MaxSubmitJobs" | "MaxSubmitJobsPU" | "MaxSubmitJobsPerUser"
        ) {
            continue;
        }
        let Some((limit, used)) = value.strip_suffix(')').and_then(|v| v.split_once('(')) else {
            continue;
        };
        let (Ok(limit), Ok(used)) = (limit.parse::<usize>(), used.parse::<usize>()) else {
            continue;
        };
        let room = limit.saturating_sub(used);
        if best.as_ref().is_none_or(|(b, _)| room < *b) {
            best = Some((room, format!("{key}={limit} ({used} in use)")));
        }
    }
    best
}

/// One partition, from `scontrol show partition -o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub default: bool,
    pub up: bool,
    /// None: unlimited.
    pub max_time: Option<Duration>,
}

pub fn parse_partitions(text: &str) -> Vec<Partition> {
    text.lines()
        .filter_map(|line| {
            let kv: HashMap<&str, &str> = line
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect();
            let name = kv.get("PartitionName")?.to_string();
            Some(Partition {
                name,
                default: kv.get("Default") == Some(&"YES"),
                up: kv.get("State").is_none_or(|s| *s == "UP"),
                max_time: kv.get("MaxTime").and_then(|t| parse_slurm_time(t)),
            })
        })
        .collect()
}

/// Slurm's `[D-]HH:MM:SS` as printed by scontrol; `UNLIMITED`/`INFINITE` -> None.
pub fn parse_slurm_time(text: &str) -> Option<Duration> {
    shoal_core::units::TimeLimit::parse("MaxTime", text)
        .ok()
        .map(|t| t.0)
}

/// `sacct -n -P -X -o JobID,State,ExitCode` for one element: its state and wait status.
pub fn parse_sacct(text: &str, id: &str) -> Option<(String, i32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f.len() >= 3 && f[0] == id).then(|| (f[1].to_string(), status_from_pair(f[2])))
    })
}

/// The last jobcomp/filetxt record of array element `array_task`: its state and status.
pub fn parse_jobcomp(text: &str, array: &str, task: &str) -> Option<(String, i32)> {
    let want_a = format!("ArrayJobId={array}");
    let want_t = format!("ArrayTaskId={task}");
    text.lines().rev().find_map(|l| {
        let mut state = None;
        let mut status = 0;
        let (mut a, mut t) = (false, false);
        for w in l.split_whitespace() {
            a |= w == want_a;
            t |= w == want_t;
            if let Some(s) = w.strip_prefix("JobState=") {
                state = Some(s.to_string());
            } else if let Some(s) = w.strip_prefix("ExitCode=") {
                status = status_from_pair(s);
            }
        }
        (a && t).then_some(state?).map(|s| (s, status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines() {
        let out = "125_3                   PD    0           JobArrayTaskLimit      \n\
                   125_1                   F     768         NonZeroExitCode\n\
                   125_[4-9]               PD    0           JobArrayTaskLimit\n\
                   126_0                   PD    0           ReqNodeNotAvail, UnavailableNodes:n1\n\
                   \n";
        let l = parse_squeue(out);
        assert_eq!(l.len(), 3);
        assert_eq!(
            l[0],
            JobLine {
                id: "125_3".into(),
                state: "PD".into(),
                status: 0,
                reason: "JobArrayTaskLimit".into()
            }
        );
        assert_eq!(l[1].status, 768);
        assert_eq!(l[2].reason, "ReqNodeNotAvail, UnavailableNodes:n1");
    }

    #[test]
    fn states_map_to_elements() {
        assert_eq!(
            element("PD", 0, "Resources"),
            Element::Pending("Resources".into())
        );
        assert_eq!(
            element("PD", 0, "QOSJobLimit"),
            Element::Pending("QOSJobLimit".into())
        );
        for reason in ["PartitionTimeLimit", "PartitionConfig", "BadConstraints"] {
            assert!(
                matches!(element("PD", 0, reason), Element::Unsatisfiable(r) if r.contains(reason) && r.contains("hint")),
                "{reason}"
            );
        }
        assert_eq!(element("R", 0, "None"), Element::Running);
        assert_eq!(element("S", 0, "None"), Element::Suspended);
        assert_eq!(element("SUSPENDED", 0, ""), Element::Suspended);
        assert_eq!(element("CG", 0, "None"), Element::Leaving);
        assert_eq!(element("CD", 0, "None"), Element::Completed);
        assert_eq!(element("COMPLETED", 0, ""), Element::Completed);
        let failed = |s, st| match element(s, st, "") {
            Element::Failed(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(failed("F", 768).contains("exit code 3"));
        assert!(failed("F", 9).contains("signal 9"));
        assert!(failed("TO", 0).contains("time limit"));
        assert!(failed("OOM", 0).contains("memory"));
        assert!(failed("NF", 0).contains("node"));
        assert!(failed("CANCELLED by 0", 0).contains("cancelled"));
    }

    #[test]
    fn submit_limits_from_assoc_mgr() {
        let text = "Current Association Manager state\n\nAssociation Records\n\n\
            ClusterName=shoal Account=root UserName=root(0) Partition= Priority=0 ID=1\n    \
            GrpJobs=N(0) GrpSubmitJobs=N(0) MaxJobs= MaxSubmitJobs=10(3) MaxWallPJ=\n\n\
            QOS Records\n\nQOS=normal(1)\n    MaxJobsPU=N(0) MaxSubmitJobsPU=4(1) MaxTRESPA=\n";
        assert_eq!(
            submit_room(text),
            Some((3, "MaxSubmitJobsPU=4 (1 in use)".into()))
        );
        assert_eq!(submit_room("MaxSubmitJobs= MaxJobs=N(0)"), None);
        assert_eq!(submit_room(""), None);
    }

    #[test]
    fn wait_statuses() {
        assert_eq!(describe_status(768), "exit code 3");
        assert_eq!(describe_status(15), "killed by signal 15");
        // 0:53 is Slurm's launch failure, not a signal anyone sent.
        let launch = describe_status(status_from_pair("0:53"));
        assert!(launch.starts_with("Slurm could not launch it"), "{launch}");
        assert!(launch.contains("--output"), "{launch}");
        assert_eq!(status_from_pair("3:0"), 768);
        assert_eq!(status_from_pair("0:9"), 9);
    }

    #[test]
    fn site_config() {
        let c = parse_config(
            "AccountingStorageType   = accounting_storage/none\nJobCompLoc              = /var/log/slurm/jobcomp.log\n\
             JobCompType             = jobcomp/filetxt\nMaxArraySize            = 1001\nMaxJobCount             = 50000\n\
             MinJobAge               = 300 sec\n",
        );
        assert_eq!(c.max_array_size, 1001);
        assert_eq!(c.max_job_count, 50000);
        assert_eq!(c.min_job_age, Duration::from_secs(300));
        assert!(!c.accounting);
        assert_eq!(c.jobcomp_log.as_deref(), Some("/var/log/slurm/jobcomp.log"));
        let c = parse_config(
            "AccountingStorageType = accounting_storage/slurmdbd\nMaxArraySize = 40001\n",
        );
        assert!(c.accounting && c.jobcomp_log.is_none());
        assert_eq!(c.max_array_size, 40001);
        assert_eq!(parse_config("").max_array_size, 1001);
    }

    #[test]
    fn partitions() {
        let p = parse_partitions(
            "PartitionName=debug AllowGroups=ALL Default=YES MaxTime=UNLIMITED State=UP TotalCPUs=16\n\
             PartitionName=short Default=NO MaxTime=01:00:00 State=UP\n\
             PartitionName=gpu Default=NO MaxTime=2-00:00:00 State=DOWN\n",
        );
        assert_eq!(p.len(), 3);
        assert!(p[0].default && p[0].up && p[0].max_time.is_none());
        assert_eq!(p[1].max_time, Some(Duration::from_secs(3600)));
        assert_eq!(p[2].max_time, Some(Duration::from_secs(2 * 86400)));
        assert!(!p[2].up);
    }

    #[test]
    fn end_records() {
        assert_eq!(
            parse_sacct("7_1|FAILED|3:0\n7_2|COMPLETED|0:0\n", "7_1"),
            Some(("FAILED".into(), 768))
        );
        assert_eq!(parse_sacct("", "7_1"), None);
        let log = "JobId=128 JobState=CANCELLED ArrayJobId=125 ArrayTaskId=2 ExitCode=0:0 \n\
                   JobId=130 JobState=FAILED ArrayJobId=129 ArrayTaskId=0 DerivedExitCode=0:0 ExitCode=0:9 \n";
        assert_eq!(parse_jobcomp(log, "129", "0"), Some(("FAILED".into(), 9)));
        assert_eq!(
            parse_jobcomp(log, "125", "2"),
            Some(("CANCELLED".into(), 0))
        );
        assert_eq!(parse_jobcomp(log, "125", "20"), None);
    }
}
