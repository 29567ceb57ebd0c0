//! Whether an idle request can ever match: HTCondor's own analysis (`condor_q
//! -better-analyze`) read into numbers, and the slots' full sizes (`condor_status`) to tell
//! "nothing is that big" from "everything that big is busy right now". Pure functions over
//! text; the backend runs the commands.

/// The summary and the conditions no slot matched, from `condor_q -better-analyze JOB`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    pub machines: u64,
    pub rejected_by_job: u64,
    pub reject_job: u64,
    pub running_yours: u64,
    pub serving_others: u64,
    pub able: u64,
    /// Requirement clauses that matched no slot (`TARGET.Memory >= RequestMemory`).
    pub unmatched: Vec<String>,
    /// `Name = value` attributes of the job that the clauses use (`RequestMemory = 100000 (mb)`).
    pub attributes: Vec<String>,
}

impl Analysis {
    /// No machine could run the job now, and none is merely busy with other work.
    pub fn nothing_matches(&self) -> bool {
        self.machines > 0
            && self.able == 0
            && self.running_yours == 0
            && self.serving_others == 0
            && self.rejected_by_job + self.reject_job >= self.machines
    }

    /// Every clause that matched nothing compares a slot's size with the request: the
    /// answer depends on how much of each slot is in use, so check the slots' full sizes.
    pub fn only_sizes(&self) -> bool {
        !self.unmatched.is_empty()
            && self.unmatched.iter().all(|c| {
                ["Memory", "Cpus", "Disk", "GPUs"]
                    .iter()
                    .any(|r| c.contains(&format!("TARGET.{r} >= Request{r}")))
            })
    }

    /// What to quote to the user.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "of {} slots, {} reject the job's requirements and {} reject the job",
            self.machines, self.rejected_by_job, self.reject_job
        );
        if !self.unmatched.is_empty() {
            s.push_str(&format!(
                "; no slot matches {}",
                self.unmatched
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.attributes.is_empty() {
            s.push_str(&format!(" (the job has {})", self.attributes.join(", ")));
        }
        s
    }
}

fn leading_number(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

pub fn parse_analysis(text: &str) -> Option<Analysis> {
    let mut a = Analysis::default();
    let mut seen_summary = false;
    let mut in_attributes = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.contains("defines the following attributes") {
            in_attributes = true;
            continue;
        }
        if in_attributes {
            if line.is_empty() && !a.attributes.is_empty() {
                in_attributes = false;
            } else if line.contains(" = ") {
                a.attributes.push(line.to_string());
            }
            continue;
        }
        if let Some(rest) = line.split_once("Of ").map(|(_, r)| r) {
            if let Some(n) = rest
                .strip_suffix("machines,")
                .or_else(|| rest.strip_suffix("slots,"))
            {
                if let Ok(n) = n.trim().parse() {
                    a.machines = n;
                    seen_summary = true;
                    continue;
                }
            }
        }
        if seen_summary {
            let Some(n) = leading_number(line) else {
                continue;
            };
            if line.contains("rejected by your job's requirements") {
                a.rejected_by_job = n;
            } else if line.contains("reject your job because of their own requirements") {
                a.reject_job = n;
            } else if line.contains("already running your jobs") {
                a.running_yours = n;
            } else if line.contains("serving other users") {
                a.serving_others = n;
            } else if line.contains("are able to run your job") {
                a.able = n;
            }
            continue;
        }
        // The step table: `[5]           0  TARGET.Memory >= RequestMemory`.
        if let Some(rest) = line.strip_prefix('[') {
            if let Some((_, after)) = rest.split_once(']') {
                let mut it = after.trim_start().splitn(2, char::is_whitespace);
                if let (Some("0"), Some(cond)) = (it.next(), it.next()) {
                    a.unmatched.push(cond.trim().to_string());
                }
            }
        }
    }
    seen_summary.then_some(a)
}

/// The most one slot can ever give (a partitionable slot's whole size, a static slot's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotSize {
    pub cpus: u64,
    pub memory_mb: u64,
    pub disk_kb: u64,
    pub gpus: u64,
}

/// `condor_status -af TotalSlotCpus TotalSlotMemory TotalSlotDisk TotalSlotGPUs
/// DynamicSlot`: one line per slot; dynamic slots are parts of a partitionable one and
/// are skipped (their parent has the whole size).
pub fn parse_slot_sizes(text: &str) -> Vec<SlotSize> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || f[4] == "true" {
                return None;
            }
            let n = |s: &str| s.parse::<f64>().map(|v| v as u64).unwrap_or(0);
            Some(SlotSize {
                cpus: n(f[0]),
                memory_mb: n(f[1]),
                disk_kb: n(f[2]),
                gpus: n(f[3]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_MATCH: &str = "\n\n-- Schedd: vm : <127.0.0.1:9618?...\n\
The Requirements expression for job 17.000 is\n\n\
    (TARGET.Arch == \"X86_64\") && (TARGET.OpSys == \"LINUX\") &&\n\
    (TARGET.Disk >= RequestDisk) && (TARGET.Memory >= RequestMemory)\n\n\
Job 17.000 defines the following attributes:\n\n\
    DiskUsage = 35\n    RequestDisk = DiskUsage (kb)\n    RequestMemory = 100000 (mb)\n\n\
The Requirements expression for job 17.000 reduces to these conditions:\n\n\
         Slots\n\
Step    Matched  Condition\n\
-----  --------  ---------\n\
[0]          13  TARGET.Arch == \"X86_64\"\n\
[1]          13  TARGET.OpSys == \"LINUX\"\n\
[3]          13  TARGET.Disk >= RequestDisk\n\
[5]           0  TARGET.Memory >= RequestMemory\n\n\
No successful match recorded.\n\
Last failed match: Tue Dec  1 09:16:18 2026\n\n\
Reason for last match failure: no match found \n\n\
017.000:  Run analysis summary ignoring user priority.  Of 13 machines,\n\
     13 are rejected by your job's requirements\n\
      0 reject your job because of their own requirements\n\
      0 match and are already running your jobs\n\
      0 match but are serving other users\n\
      0 are able to run your job\n\n\
WARNING:  Be advised:\n   No machines matched the jobs's constraints\n";

    #[test]
    fn reads_the_summary_and_the_unmatched_clauses() {
        let a = parse_analysis(NO_MATCH).unwrap();
        assert_eq!((a.machines, a.rejected_by_job, a.able), (13, 13, 0));
        assert!(a.nothing_matches() && a.only_sizes());
        assert_eq!(a.unmatched, ["TARGET.Memory >= RequestMemory"]);
        assert!(a
            .attributes
            .contains(&"RequestMemory = 100000 (mb)".to_string()));
        let e = a.explain();
        assert!(
            e.contains("of 13 slots, 13 reject") && e.contains("RequestMemory = 100000"),
            "{e}"
        );
        let busy = NO_MATCH.replace("0 match but are serving", "4 match but are serving");
        assert!(!parse_analysis(&busy).unwrap().nothing_matches());
        let os = NO_MATCH.replace("13  TARGET.OpSys", "0  TARGET.OpSys");
        assert!(!parse_analysis(&os).unwrap().only_sizes());
        assert_eq!(
            parse_analysis("017.000:  Job has not yet been considered by the matchmaker.\n"),
            None
        );
    }

    #[test]
    fn slot_sizes_skip_dynamic_slots() {
        let s =
            parse_slot_sizes("1 1536 1000000 0 false\n4 6000 4000000 0 false\n1 1000 100 0 true\n");
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            SlotSize {
                cpus: 4,
                memory_mb: 6000,
                disk_kb: 4000000,
                gpus: 0
            }
        );
    }
}
