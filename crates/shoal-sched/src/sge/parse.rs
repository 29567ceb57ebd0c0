//! Reading what Grid Engine prints: `qsub -terse` job ids, `qstat -xml` job lists (array task
//! ranges included), `qstat -j ID -xml` error reasons and `qacct -j` records. No I/O here.

use std::collections::BTreeMap;

/// Where a worker's array task stands in one `qstat -xml` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running,
    /// `E` in the state letters (`Eqw`): the job will never run until someone clears it.
    Error,
    /// `d`: qdel was issued, the task is on its way out.
    Deleting,
    /// `s` (suspended), `S` (its queue suspended), `T` (suspended by a load threshold).
    Suspended,
}

impl TaskState {
    /// SGE state letters: d(eletion) E(rror) h(old) r(unning) R(estarted) s/S/T (suspended)
    /// t(ransferring) q(ueued) w(aiting). Errors and deletion win over everything else.
    pub fn from_letters(s: &str) -> TaskState {
        if s.contains('E') {
            TaskState::Error
        } else if s.contains('d') {
            TaskState::Deleting
        } else if s.contains('q') || s.contains('w') {
            TaskState::Pending
        } else if s.contains(['s', 'S', 'T']) {
            TaskState::Suspended
        } else {
            // r, t (transferring), Rr (restarted)
            TaskState::Running
        }
    }
}

/// (job number, array task number) -> state, for every task of one listing.
pub type Listing = BTreeMap<(u64, u64), TaskState>;

/// Parse `qstat -xml` (queue_info and job_info sections). Non-array jobs count as task 1.
pub fn qstat_listing(xml: &str) -> Result<Listing, String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| format!("qstat -xml output is not XML: {e}"))?;
    let mut out = Listing::new();
    for job in doc.descendants().filter(|n| n.has_tag_name("job_list")) {
        let text = |tag: &str| {
            job.children()
                .find(|c| c.has_tag_name(tag))
                .and_then(|c| c.text())
                .map(str::trim)
                .unwrap_or("")
        };
        let number: u64 = text("JB_job_number")
            .parse()
            .map_err(|_| format!("qstat -xml: bad JB_job_number {:?}", text("JB_job_number")))?;
        let state = TaskState::from_letters(text("state"));
        let tasks = text("tasks");
        let numbers = if tasks.is_empty() {
            vec![1]
        } else {
            task_numbers(tasks)
                .ok_or_else(|| format!("qstat -xml: bad task list {tasks:?} of job {number}"))?
        };
        for t in numbers {
            out.insert((number, t), state.clone());
        }
    }
    Ok(out)
}

/// Expand SGE's task lists: `7`, `2-1000:1`, `1,2`, `5-9:2,12`.
pub fn task_numbers(text: &str) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (range, step) = match part.split_once(':') {
            Some((r, s)) => (r, s.parse::<u64>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
            None => {
                let n = range.parse::<u64>().ok()?;
                (n, n)
            }
        };
        if hi < lo {
            return None;
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    (!out.is_empty()).then_some(out)
}

/// The job number of `qsub -terse` output: `123` or, for an array, `123.1-16:1`.
pub fn qsub_job_number(stdout: &str) -> Option<u64> {
    let line = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    line.split('.').next()?.parse().ok()
}

/// Error reasons per array task from `qstat -j ID -xml` (`JAT_message_list`), plus the
/// job-level scheduling messages as a fallback under task 0.
pub fn error_reasons(xml: &str) -> Result<BTreeMap<u64, String>, String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| format!("qstat -j -xml output is not XML: {e}"))?;
    let mut out = BTreeMap::new();
    for task in doc
        .descendants()
        .filter(|n| n.children().any(|c| c.has_tag_name("JAT_task_number")))
    {
        let Some(number) = task
            .children()
            .find(|c| c.has_tag_name("JAT_task_number"))
            .and_then(|c| c.text())
            .and_then(|t| t.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let messages: Vec<String> = task
            .descendants()
            .filter(|n| n.has_tag_name("QIM_message"))
            .filter_map(|n| n.text())
            .map(strip_stamp)
            .collect();
        if !messages.is_empty() {
            out.insert(number, messages.join("; "));
        }
    }
    let job_level: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("MES_message"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect();
    if !job_level.is_empty() {
        out.insert(0, job_level.join("; "));
    }
    Ok(out)
}

/// `11/26/2026 05:24:26 [0:2695]: error: can't chdir ...` -> `error: can't chdir ...`
fn strip_stamp(msg: &str) -> String {
    let msg = msg.trim();
    match msg.find("]: ") {
        Some(i) if msg[..i].contains('[') => msg[i + 3..].to_string(),
        _ => msg.to_string(),
    }
}

/// The limits of the global configuration (`qconf -sconf`) that shape submissions: most
/// tasks per array job (`max_aj_tasks`) and most jobs per user (`max_u_jobs`); 0 is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_aj_tasks: Option<usize>,
    pub max_u_jobs: Option<usize>,
}

pub fn global_limits(sconf: &str) -> Limits {
    let value = |key: &str| {
        sconf
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
    };
    Limits {
        max_aj_tasks: value("max_aj_tasks"),
        max_u_jobs: value("max_u_jobs"),
    }
}

/// `qalter -w v JOB`: SGE checks the job against the cluster as if it were empty. None if
/// some queue could run it; else SGE's reasons (`cannot run in PE "smp" because ...`).
pub fn verification_failure(output: &str) -> Option<String> {
    if !output.contains("no suitable queues") {
        return None;
    }
    let reasons: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("verification:"))
        .collect();
    Some(if reasons.is_empty() {
        "no queue instance offers what the job requests".to_string()
    } else {
        reasons.join("; ")
    })
}

/// One task's accounting record (`qacct -j`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    pub task: u64,
    /// `failed` field: 0, or a code with SGE's explanation (`100 : assumedly after job`).
    pub failed: String,
    pub exit_status: i64,
}

impl Accounting {
    /// What the user should read when this task ended a worker.
    pub fn describe(&self) -> String {
        let mut s = match self.exit_status {
            0 => "exit status 0".to_string(),
            code if code > 128 => format!("killed by signal {} (exit status {code})", code - 128),
            code => format!("exit status {code}"),
        };
        if self.failed.trim() != "0" {
            s.push_str(&format!("; SGE failed code {}", self.failed.trim()));
        }
        s
    }

    /// Whether SGE named a specific cause (a limit, a failed prolog...) rather than the
    /// generic "assumedly after job" of a task that was simply killed.
    pub fn explained(&self) -> bool {
        let f = self.failed.trim();
        f != "0" && !f.starts_with("100")
    }

    pub fn ok(&self) -> bool {
        self.exit_status == 0 && self.failed.trim() == "0"
    }
}

/// Records of `qacct -j JOB` (blocks separated by `====` lines). Non-array jobs are task 1.
pub fn qacct_records(text: &str) -> Vec<Accounting> {
    let mut out = Vec::new();
    for block in text.split("\n=").map(|b| b.trim_start_matches('=')) {
        let mut fields = BTreeMap::new();
        for line in block.lines() {
            if let Some((k, v)) = line.trim().split_once(char::is_whitespace) {
                fields.insert(k.to_string(), v.trim().to_string());
            }
        }
        let (Some(failed), Some(exit)) = (fields.get("failed"), fields.get("exit_status")) else {
            continue;
        };
        let task = fields
            .get("taskid")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        out.push(Accounting {
            task,
            failed: failed.clone(),
            exit_status: exit
                .split_whitespace()
                .next()
                .and_then(|e| e.parse().ok())
                .unwrap_or(-1),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>7</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>shoal</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-26T05:23:07</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
      <tasks>1</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>7</JB_job_number>
      <state>t</state>
      <tasks>2</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>9</JB_job_number>
      <state>dr</state>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>7</JB_job_number>
      <state>qw</state>
      <tasks>3-6:1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>8</JB_job_number>
      <state>Eqw</state>
      <tasks>1,2</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>10</JB_job_number>
      <state>hqw</state>
      <tasks>1-9:4,20</tasks>
    </job_list>
  </job_info>
</job_info>"#;

    #[test]
    fn listing_expands_array_tasks_and_states() {
        let l = qstat_listing(LISTING).unwrap();
        assert_eq!(l[&(7, 1)], TaskState::Running);
        assert_eq!(l[&(7, 2)], TaskState::Running);
        for t in 3..=6 {
            assert_eq!(l[&(7, t)], TaskState::Pending);
        }
        assert!(!l.contains_key(&(7, 7)));
        assert_eq!(l[&(8, 1)], TaskState::Error);
        assert_eq!(l[&(8, 2)], TaskState::Error);
        assert_eq!(l[&(9, 1)], TaskState::Deleting);
        let held: Vec<u64> = l.keys().filter(|k| k.0 == 10).map(|k| k.1).collect();
        assert_eq!(held, vec![1, 5, 9, 20]);
        assert_eq!(l[&(10, 1)], TaskState::Pending);
    }

    #[test]
    fn suspension_letters() {
        for s in ["s", "S", "T", "rs"] {
            assert_eq!(TaskState::from_letters(s), TaskState::Suspended, "{s}");
        }
        assert_eq!(TaskState::from_letters("t"), TaskState::Running);
        assert_eq!(TaskState::from_letters("Rr"), TaskState::Running);
        assert_eq!(TaskState::from_letters("hqw"), TaskState::Pending);
    }

    #[test]
    fn global_limits_and_verification() {
        let conf = "execd_spool_dir  /var/spool\nmax_aj_instances 2000\nmax_aj_tasks     4\nmax_u_jobs       0\n";
        assert_eq!(
            global_limits(conf),
            Limits {
                max_aj_tasks: Some(4),
                max_u_jobs: None
            }
        );
        let out = "Job 40 cannot run in PE \"smp\" because it only offers 0 slots\nverification: no suitable queues\n";
        assert_eq!(
            verification_failure(out).as_deref(),
            Some("Job 40 cannot run in PE \"smp\" because it only offers 0 slots")
        );
        assert_eq!(
            verification_failure("verification: found possible assignment with 1 slots"),
            None
        );
    }

    #[test]
    fn empty_and_broken_listings() {
        let empty = "<?xml version='1.0'?>\n<job_info><queue_info></queue_info><job_info></job_info></job_info>";
        assert!(qstat_listing(empty).unwrap().is_empty());
        assert!(qstat_listing("error: commlib error: can't connect").is_err());
        let bad = "<job_info><job_list><JB_job_number>x</JB_job_number></job_list></job_info>";
        assert!(qstat_listing(bad).unwrap_err().contains("JB_job_number"));
    }

    #[test]
    fn task_lists() {
        assert_eq!(task_numbers("7"), Some(vec![7]));
        assert_eq!(task_numbers("2-4:1"), Some(vec![2, 3, 4]));
        assert_eq!(task_numbers("1-1000:1").unwrap().len(), 1000);
        assert_eq!(task_numbers("1,3-7:2"), Some(vec![1, 3, 5, 7]));
        assert_eq!(task_numbers("5-3"), None);
        assert_eq!(task_numbers("a"), None);
        assert_eq!(task_numbers("1-4:0"), None);
    }

    #[test]
    fn qsub_terse_ids() {
        assert_eq!(qsub_job_number("7.1-3:1\n"), Some(7));
        assert_eq!(qsub_job_number("42\n"), Some(42));
        assert_eq!(
            qsub_job_number("Your job 42 (\"x\") has been submitted"),
            None
        );
    }

    #[test]
    fn error_reason_per_task() {
        let xml = r#"<?xml version='1.0'?>
<detailed_job_info><djob_info><element>
  <JB_job_number>11</JB_job_number>
  <JB_ja_tasks>
    <ulong_sublist>
      <JAT_status>0</JAT_status>
      <JAT_task_number>1</JAT_task_number>
      <JAT_message_list><ulong_sublist><QIM_type>1</QIM_type>
        <QIM_message>11/26/2026 05:24:26 [0:2695]: error: can&apos;t chdir to /nonexistent: No such file or directory</QIM_message>
      </ulong_sublist></JAT_message_list>
    </ulong_sublist>
    <ulong_sublist><JAT_task_number>2</JAT_task_number></ulong_sublist>
  </JB_ja_tasks>
</element></djob_info>
<messages><element><SME_message_list><element><MES_message>Job is in error state</MES_message></element></SME_message_list></element></messages>
</detailed_job_info>"#;
        let r = error_reasons(xml).unwrap();
        assert_eq!(
            r[&1],
            "error: can't chdir to /nonexistent: No such file or directory"
        );
        assert!(!r.contains_key(&2));
        assert_eq!(r[&0], "Job is in error state");
    }

    #[test]
    fn accounting_records() {
        let text = "==============================================================\nqname        all.q\njobnumber    12\ntaskid       3\nfailed       100 : assumedly after job\nexit_status  137                 \n==============================================================\nqname        all.q\njobnumber    12\ntaskid       4\nfailed       0    \nexit_status  0\n";
        let r = qacct_records(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].task, 3);
        assert_eq!(r[0].exit_status, 137);
        assert!(!r[0].ok());
        assert_eq!(
            r[0].describe(),
            "killed by signal 9 (exit status 137); SGE failed code 100 : assumedly after job"
        );
        assert!(r[1].ok());
        assert!(!r[0].explained());
        let limit = Accounting {
            task: 1,
            failed: "37  : qmaster enforced h_rt, h_cpu, or h_vmem limit".into(),
            exit_status: 137,
        };
        assert!(limit.explained());
        let single = "====\njobnumber 5\ntaskid undefined\nfailed 0\nexit_status 2\n";
        assert_eq!(qacct_records(single)[0].task, 1);
        assert!(qacct_records("error: job id 5 not found\n").is_empty());
    }
}
