//! `shoal show SESSION`: what happened in a session, as text for a person or JSON for a
//! script — tasks, durations, throughput over time, workers (queue wait, start-up, busy and
//! idle), hosts, and failures grouped by error.

use crate::fmt::{self, count, dur, opt_dur, rate, table};
use crate::record::Record;
use shoal_core::calls::Calls;
use shoal_core::journal::{Dist, Log, Summary};

/// Workers and failure groups listed without `--all`.
const SHOWN: usize = 30;

pub struct Options<'a> {
    /// List every worker and failure group.
    pub all: bool,
    /// Renders a wall-clock time (local time; tests pass a fixed rendering).
    pub time: &'a dyn Fn(f64) -> String,
}

fn dist(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!(
            "p50 {} · p95 {} · max {}",
            dur(d.p50),
            dur(d.p95),
            dur(d.max)
        ),
        None => "-".into(),
    }
}

/// The session's name if it has one (a run's, or joblib's `export_metadata`).
pub fn name(meta: &serde_json::Value) -> Option<String> {
    let name = meta.get("name").and_then(|n| n.as_str());
    match (meta.get("run"), name) {
        (Some(r), Some(n)) => Some(format!("run {r} ({n})")),
        (Some(r), None) => Some(format!("run {r}")),
        (None, Some(n)) => Some(n.to_string()),
        (None, None) => None,
    }
}

pub fn text(rec: &Record, log: &Log, s: &Summary, o: &Options<'_>) -> String {
    let mut out = String::new();
    let info = &s.session;
    let state = rec.state(Some(log));
    out += &format!(
        "session {} · {} · {} · {}\n",
        info.id,
        info.backend,
        state,
        dur(s.elapsed)
    );
    let mut when = format!(
        "started {} on {} (pid {})",
        (o.time)(info.started),
        info.host,
        info.pid
    );
    if let Some(end) = s.ended {
        when += &format!(" · ended {}", (o.time)(end));
    }
    out += &(when + "\n");
    if let Some(n) = name(&info.metadata) {
        out += &format!("name:      {n}\n");
    }
    if let Some(m) = s
        .message
        .as_ref()
        .or(rec.meta.as_ref().and_then(|m| m.message.as_ref()))
    {
        out += &format!("message:   {}\n", m.lines().next().unwrap_or(""));
    }
    out += "\n";

    let t = &s.tasks;
    let mut tasks = format!(
        "{} of {} done",
        count(t.finished - t.failed.min(t.finished)),
        count(t.total.max(t.finished))
    );
    tasks += &format!(" · {} failed", count(t.failed));
    if t.retried > 0 {
        tasks += &format!(
            " · {} retried after their worker was lost",
            count(t.retried)
        );
    }
    if t.lost > 0 {
        tasks += &format!(" ({} given up)", count(t.lost));
    }
    if t.running > 0 {
        tasks += &format!(" · {} running", count(t.running));
    }
    out += &format!("tasks       {tasks}\n");
    let exact = if s.durations_exact || s.durations.is_none() {
        ""
    } else {
        " (per-task where timed, else chunk means)"
    };
    out += &format!("durations   {}{exact}\n", dist(&s.durations));
    let peak = s.throughput.rates.iter().copied().fold(0.0, f64::max);
    out += &format!(
        "throughput  {} overall · peak {} · per {} bin:\n            {}\n",
        rate(s.rate),
        rate(peak),
        dur(s.throughput.bin),
        fmt::sparkline(&s.throughput.rates).trim_end()
    );
    if let Some(eta) = s.eta {
        out += &format!("eta         {} at {}\n", dur(eta), rate(s.recent_rate));
    }
    let busy: f64 = s.workers.iter().map(|w| w.busy).sum();
    let up: f64 = s.workers.iter().map(|w| w.busy + w.idle).sum();
    let by_status: Vec<String> = s
        .workers_by_status
        .iter()
        .map(|(st, n)| format!("{n} {}", st.as_str()))
        .collect();
    out += &format!(
        "workers     {} ({}) · busy {:.0}% of their time up\n",
        s.workers.len(),
        by_status.join(", "),
        if up > 0.0 { 100.0 * busy / up } else { 0.0 }
    );
    out += &format!("queue wait  {}\n", dist(&s.queue_wait));
    out += &format!("start-up    {}\n", dist(&s.startup));

    if !s.workers.is_empty() {
        out += "\n";
        let mut workers: Vec<_> = s.workers.iter().collect();
        workers.sort_by_key(|w| (!w.status.live(), w.status));
        let shown = if o.all { workers.len() } else { SHOWN };
        let rows: Vec<Vec<String>> = workers
            .iter()
            .take(shown)
            .map(|w| {
                let up = w.running.is_some() || w.announced.is_some();
                let if_up = |secs: f64| if up { dur(secs) } else { "-".into() };
                vec![
                    w.id.clone(),
                    w.job.clone().unwrap_or_else(|| "-".into()),
                    w.host.clone().unwrap_or_else(|| "-".into()),
                    w.status.as_str().into(),
                    count(w.tasks),
                    count(w.failed),
                    if_up(w.busy),
                    if_up(w.idle),
                    opt_dur(w.queue_wait),
                    opt_dur(w.startup),
                    w.reason
                        .clone()
                        .map(|r| fmt::clip(&r, 40))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        out += &table(
            &[
                "WORKER",
                "JOB",
                "HOST",
                "STATE",
                "TASKS",
                "FAILED",
                "BUSY",
                "IDLE",
                "QUEUED",
                "START-UP",
                "ENDED BECAUSE",
            ],
            &rows,
            &[4, 5, 6, 7, 8, 9],
        );
        if workers.len() > shown {
            out += &format!(
                "… {} more workers (--all lists every one)\n",
                workers.len() - shown
            );
        }
    }
    if !s.hosts.is_empty() {
        out += "\n";
        let rows: Vec<Vec<String>> = s
            .hosts
            .iter()
            .map(|h| {
                vec![
                    h.host.clone(),
                    count(h.workers),
                    count(h.tasks),
                    count(h.failed),
                    dur(h.busy),
                ]
            })
            .collect();
        out += &table(
            &["HOST", "WORKERS", "TASKS", "FAILED", "BUSY"],
            &rows,
            &[1, 2, 3, 4],
        );
    }
    // Tasks as the user's calls number them (the journal has session task numbers).
    let calls = rec.dir.as_ref().map(Calls::read).unwrap_or_default();
    if !s.failures.is_empty() {
        let recorded: u64 = s.failures.iter().map(|g| g.count).sum();
        let distinct: u64 = s.failures.iter().map(|g| g.distinct).sum();
        out += &format!(
            "\nfailures: {} tasks, {} distinct errors\n",
            count(recorded),
            count(distinct)
        );
        let shown = if o.all { s.failures.len() } else { SHOWN };
        for g in s.failures.iter().take(shown) {
            let mut tasks: Vec<String> = g.tasks.iter().map(|&t| calls.label(t)).collect();
            if g.count > g.tasks.len() as u64 {
                tasks.push("…".into());
            }
            let similar = if g.distinct > 1 {
                format!(" (and {} similar)", count(g.distinct - 1))
            } else {
                String::new()
            };
            out += &format!(
                "  {:>5} × {}{similar} — task{} {}\n",
                count(g.count),
                g.message,
                if g.count == 1 { "" } else { "s" },
                tasks.join(", ")
            );
        }
        if s.failures.len() > shown {
            out += &format!("  … {} more errors (--all)\n", s.failures.len() - shown);
        }
    }
    out += "\n";
    let first_failed = s.failures.first().and_then(|g| g.tasks.first());
    if rec.dir.is_some() {
        let task = first_failed.map_or_else(|| "TASK".to_string(), |&t| calls.label(t));
        out += &format!("one task's output: shoal logs {} {task}\n", info.id);
    } else {
        out += "the work dir was removed (`shoal clean`, or its logs expired): task output is \
                not kept\n";
    }
    out += &format!(
        "timeline picture:  shoal show {} --plot timeline.png\n",
        info.id
    );
    out
}

/// The summary as JSON, with where the record lives.
pub fn json(rec: &Record, log: &Log, s: &Summary) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["display_state"] = rec.state(Some(log)).into();
    v["work_dir"] = rec
        .dir
        .as_ref()
        .map(|d| d.root().display().to_string())
        .into();
    v["journal"] = rec.journal.as_ref().map(|p| p.display().to_string()).into();
    // Each failure group's tasks also as the user sees them (`shoal logs SESSION LABEL`).
    let calls = rec.dir.as_ref().map(Calls::read).unwrap_or_default();
    if let Some(groups) = v["failures"].as_array_mut() {
        for (g, f) in groups.iter_mut().zip(&s.failures) {
            g["task_labels"] = f
                .tasks
                .iter()
                .map(|&t| calls.label(t))
                .collect::<Vec<_>>()
                .into();
        }
    }
    v
}
