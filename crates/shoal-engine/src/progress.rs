//! Progress for people: a bar with rate and ETA on a terminal, a plain line every few seconds
//! elsewhere (logs, batch jobs). Drawn from the engine's counters, never from the filesystem.

use crate::record::Stats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub enum Progress {
    Off,
    Bar(ProgressBar),
    Lines {
        session: String,
        start: Instant,
        last: Instant,
    },
}

impl Progress {
    pub fn new(enabled: bool, session: &str) -> Self {
        if !enabled {
            return Progress::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines {
                session: session.to_string(),
                start: Instant::now(),
                last: Instant::now(),
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} tasks · {per_sec} · ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Progress::Bar(bar)
    }

    /// A line for the user above the bar (or on stderr without one), once.
    pub fn println(&self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    /// A short note beside the bar (e.g. a failed scheduler query).
    pub fn note(&self, msg: &str) {
        if let Progress::Bar(bar) = self {
            bar.set_message(msg.to_string());
        }
    }

    pub fn draw(&mut self, s: &Stats) {
        match self {
            Progress::Off => {}
            Progress::Bar(bar) => draw_bar(bar, s),
            Progress::Lines { last, .. } => {
                if last.elapsed() >= Duration::from_secs(5) {
                    *last = Instant::now();
                    self.line(s);
                }
            }
        }
    }

    /// The final state, once.
    pub fn finish(&mut self, s: &Stats) {
        match std::mem::replace(self, Progress::Off) {
            Progress::Bar(bar) => {
                draw_bar(&bar, s);
                bar.abandon();
            }
            lines @ Progress::Lines { .. } => {
                *self = lines;
                self.line(s);
                *self = Progress::Off;
            }
            Progress::Off => {}
        }
    }

    fn line(&self, s: &Stats) {
        let Progress::Lines { session, start, .. } = self else {
            return;
        };
        let secs = start.elapsed().as_secs_f64();
        let rate = s.tasks_done as f64 / secs.max(1e-9);
        let eta = if rate > 0.0 && s.tasks_total > s.tasks_done {
            format!("{:.0}s", (s.tasks_total - s.tasks_done) as f64 / rate)
        } else {
            "-".into()
        };
        eprintln!(
            "shoal {session}: {}/{} tasks · {rate:.1} tasks/s · elapsed {secs:.0}s · ETA {eta} · {} workers{}",
            s.tasks_done,
            s.tasks_total,
            s.workers_running,
            if s.tasks_failed > 0 {
                format!(" · {} failed", s.tasks_failed)
            } else {
                String::new()
            }
        );
    }
}

fn draw_bar(bar: &ProgressBar, s: &Stats) {
    bar.set_length(s.tasks_total);
    bar.set_position(s.tasks_done);
    let mut msg = format!("· {} workers", s.workers_running);
    if s.tasks_failed > 0 {
        msg.push_str(&format!(" · {} failed", s.tasks_failed));
    }
    bar.set_message(msg);
}
