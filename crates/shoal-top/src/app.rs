//! `shoal top`'s state and keys, without a terminal: which view is open, what is selected, the
//! filter, the cancel confirmation. A key returns an [`Effect`] for the loop to carry out, so
//! every key can be tested by feeding it to an [`App`].

use crate::data::{Detail, Key, Row};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use shoal_core::calls::Calls;
use shoal_core::journal::WorkerSummary;
use shoal_core::SessionDir;
use std::time::{Duration, Instant};

/// What `c` cancels.
#[derive(Debug, Clone)]
pub enum Target {
    Session(SessionDir),
    Run(i64),
}

/// A task whose output the task view shows.
#[derive(Debug, Clone)]
pub enum TaskRef {
    /// A session's task number.
    Session(SessionDir, u64),
    /// A run's task index.
    Run(i64, u64),
}

/// Cancels a session or run; returns what `shoal cancel` printed, or its error.
pub type CancelFn = dyn Fn(&Target) -> Result<String, String> + Send + Sync;
/// What `shoal logs` prints for a task.
pub type TaskLogFn = dyn Fn(&TaskRef) -> String + Send + Sync;

/// What the CLI lends `shoal top`: the code of `shoal cancel` and `shoal logs`.
pub struct Actions {
    pub cancel: Box<CancelFn>,
    pub task_log: Box<TaskLogFn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    List,
    Session,
    Task,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Workers,
    Failures,
}

/// What the loop must do after a key.
#[derive(Debug, Clone)]
pub enum Effect {
    None,
    /// Reload now (a view was opened).
    Reload,
    OpenTask(TaskRef, String),
    Cancel(Target),
    Quit,
}

pub struct TaskText {
    pub title: String,
    pub text: String,
    pub scroll: u16,
}

pub struct Confirm {
    pub target: Target,
    pub what: String,
}

pub struct App {
    pub view: View,
    pub rows: Vec<Row>,
    pub filter: String,
    pub filtering: bool,
    /// Selected index among the rows the filter keeps.
    pub selected: usize,
    /// The selected row's key, so a refresh keeps the selection on the same row (and the
    /// session view knows what it shows).
    pub selected_key: Option<Key>,
    /// The list's filter while the session view has its own.
    list_filter: String,
    pub detail: Option<Detail>,
    pub pane: Pane,
    pub worker_sel: usize,
    pub failure_sel: usize,
    pub task: Option<TaskText>,
    pub confirm: Option<Confirm>,
    pub status: Option<(String, Instant)>,
    pub color: bool,
    /// Wall-clock time of the last reload.
    pub now: f64,
    /// Height of the scrollable area last drawn (for page keys).
    pub page: u16,
    /// Renders wall-clock times (local time; tests fix it).
    pub time: fn(f64) -> String,
}

/// A failed task line of the session view: the task (if known) and what to show.
pub type FailureLine = (Option<TaskRef>, String);

const STATUS_FOR: Duration = Duration::from_secs(8);

impl App {
    pub fn new(color: bool) -> App {
        App {
            view: View::List,
            rows: Vec::new(),
            filter: String::new(),
            filtering: false,
            selected: 0,
            selected_key: None,
            list_filter: String::new(),
            detail: None,
            pane: Pane::Workers,
            worker_sel: 0,
            failure_sel: 0,
            task: None,
            confirm: None,
            status: None,
            color,
            now: 0.0,
            page: 10,
            time: crate::fmt::local,
        }
    }

    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// The rows the filter keeps.
    pub fn visible(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| {
                self.filter.is_empty() || r.haystack().contains(&self.filter.to_lowercase())
            })
            .collect()
    }

    /// New rows from a reload: keep the selection on the same session or run.
    pub fn set_rows(&mut self, rows: Vec<Row>, now: f64) {
        self.rows = rows;
        self.now = now;
        if self.view != View::List {
            return;
        }
        let keys: Vec<Key> = self.visible().iter().map(|r| r.key.clone()).collect();
        if let Some(i) = self
            .selected_key
            .as_ref()
            .and_then(|k| keys.iter().position(|r| r == k))
        {
            self.selected = i;
        }
        self.selected = self.selected.min(keys.len().saturating_sub(1));
        self.selected_key = keys.get(self.selected).cloned();
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.visible().get(self.selected).copied()
    }

    /// Workers of the open session as listed: live ones first, then by id.
    pub fn workers(&self) -> Vec<&WorkerSummary> {
        let Some(s) = self.detail.as_ref().and_then(|d| d.summary.as_ref()) else {
            return Vec::new();
        };
        let mut w: Vec<&WorkerSummary> = s
            .workers
            .iter()
            .filter(|w| {
                self.matches(&format!(
                    "{} {} {} {}",
                    w.id,
                    w.host.as_deref().unwrap_or(""),
                    w.job.as_deref().unwrap_or(""),
                    w.status.as_str()
                ))
            })
            .collect();
        w.sort_by(|a, b| {
            (!a.status.live(), a.status, &a.id).cmp(&(!b.status.live(), b.status, &b.id))
        });
        w
    }

    /// Failed tasks of the open session (or run), one line each.
    pub fn failures(&self) -> Vec<FailureLine> {
        let Some(d) = &self.detail else {
            return Vec::new();
        };
        let mut out: Vec<FailureLine> = Vec::new();
        if let Some(run) = &d.row.run {
            for t in &d.run_failed {
                let code = t.exit_code.map_or("?".to_string(), |c| c.to_string());
                let line = format!(
                    "{:>5}  exit {code} · {} · {}",
                    t.idx,
                    t.host.as_deref().unwrap_or("-"),
                    crate::fmt::opt_dur(t.duration)
                );
                out.push((Some(TaskRef::Run(run.id, t.idx as u64)), line));
            }
        } else if let Some(s) = &d.summary {
            let dir = d.row.session.as_ref().and_then(|r| r.dir.clone());
            // Tasks as the user's calls number them (a small file, read per refresh).
            let calls = dir.as_ref().map(Calls::read).unwrap_or_default();
            for g in &s.failures {
                for &t in &g.tasks {
                    let task = dir.clone().map(|dir| TaskRef::Session(dir, t));
                    out.push((task, format!("{:>5}  {}", calls.label(t), g.message)));
                }
                if g.count > g.tasks.len() as u64 {
                    let more = g.count - g.tasks.len() as u64;
                    out.push((None, format!("       … {more} more: {}", g.message)));
                }
            }
        }
        out.retain(|(_, l)| self.matches(l));
        out
    }

    pub fn say(&mut self, msg: impl Into<String>) {
        self.status = Some((msg.into(), Instant::now()));
    }

    pub fn status_line(&self) -> Option<&str> {
        self.status
            .as_ref()
            .filter(|(_, at)| at.elapsed() < STATUS_FOR)
            .map(|(m, _)| m.as_str())
    }

    fn target_of(row: &Row) -> Option<Target> {
        match &row.key {
            Key::Run(id) => Some(Target::Run(*id)),
            Key::Session(_) => row
                .session
                .as_ref()
                .and_then(|r| r.dir.clone())
                .map(Target::Session),
        }
    }

    fn ask_cancel(&mut self, row: Option<Row>) {
        let Some(row) = row else { return };
        if !row.live {
            self.say(format!("{} is {}: nothing to cancel", row.name, row.state));
            return;
        }
        let Some(target) = App::target_of(&row) else {
            return;
        };
        let what = match &row.key {
            Key::Run(id) => format!("run {id} ({})", row.name),
            Key::Session(id) => format!("session {id}"),
        };
        self.confirm = Some(Confirm { target, what });
    }

    /// Handle a key; the returned effect is the loop's to carry out.
    pub fn key(&mut self, k: KeyEvent) -> Effect {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Effect::Quit;
        }
        if let Some(c) = self.confirm.take() {
            return match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.say(format!("cancelling {}…", c.what));
                    Effect::Cancel(c.target)
                }
                _ => {
                    self.say("not cancelled");
                    Effect::None
                }
            };
        }
        if self.filtering {
            match k.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.worker_sel = 0;
            self.failure_sel = 0;
            if self.view == View::List {
                self.selected = 0;
                self.selected_key = self.selected_row().map(|r| r.key.clone());
            }
            return Effect::None;
        }
        match k.code {
            KeyCode::Char('q') => return Effect::Quit,
            KeyCode::Char('/') if self.view != View::Task => {
                self.filtering = true;
                return Effect::None;
            }
            _ => {}
        }
        match self.view {
            View::List => self.list_key(k),
            View::Session => self.session_key(k),
            View::Task => self.task_key(k),
        }
    }

    fn list_key(&mut self, k: KeyEvent) -> Effect {
        let n = self.visible().len();
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(n.saturating_sub(1))
            }
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(self.page as usize),
            KeyCode::PageDown => {
                self.selected = (self.selected + self.page as usize).min(n.saturating_sub(1))
            }
            KeyCode::Home | KeyCode::Char('g') => self.selected = 0,
            KeyCode::End | KeyCode::Char('G') => self.selected = n.saturating_sub(1),
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => {
                if let Some(row) = self.selected_row() {
                    self.selected_key = Some(row.key.clone());
                    self.view = View::Session;
                    self.pane = Pane::Workers;
                    self.worker_sel = 0;
                    self.failure_sel = 0;
                    self.list_filter = std::mem::take(&mut self.filter);
                    return Effect::Reload;
                }
            }
            KeyCode::Char('c') => {
                let row = self.selected_row().cloned();
                self.ask_cancel(row);
            }
            _ => {}
        }
        self.selected_key = self.selected_row().map(|r| r.key.clone());
        Effect::None
    }

    fn session_key(&mut self, k: KeyEvent) -> Effect {
        let (nw, nf) = (self.workers().len(), self.failures().len());
        let (sel, n) = match self.pane {
            Pane::Workers => (&mut self.worker_sel, nw),
            Pane::Failures => (&mut self.failure_sel, nf),
        };
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => *sel = sel.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => *sel = (*sel + 1).min(n.saturating_sub(1)),
            KeyCode::PageUp => *sel = sel.saturating_sub(self.page as usize),
            KeyCode::PageDown => *sel = (*sel + self.page as usize).min(n.saturating_sub(1)),
            KeyCode::Home | KeyCode::Char('g') => *sel = 0,
            KeyCode::End | KeyCode::Char('G') => *sel = n.saturating_sub(1),
            KeyCode::Tab | KeyCode::BackTab => {
                self.pane = match self.pane {
                    Pane::Workers => Pane::Failures,
                    Pane::Failures => Pane::Workers,
                }
            }
            KeyCode::Esc | KeyCode::Left | KeyCode::Char('h') | KeyCode::Backspace => {
                if !self.filter.is_empty() && k.code == KeyCode::Esc {
                    self.filter.clear();
                } else {
                    self.view = View::List;
                    self.detail = None;
                    self.filter = std::mem::take(&mut self.list_filter);
                }
            }
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => {
                if self.pane == Pane::Workers && nf > 0 {
                    self.pane = Pane::Failures;
                    return Effect::None;
                }
                let line = self.failures().into_iter().nth(self.failure_sel);
                match line {
                    Some((Some(task), text)) => {
                        let title = match &task {
                            TaskRef::Session(d, t) => {
                                format!("task {} of session {}", Calls::read(d).label(*t), d.id())
                            }
                            TaskRef::Run(r, t) => format!("task {t} of run {r}"),
                        };
                        let _ = text;
                        return Effect::OpenTask(task, title);
                    }
                    Some((None, _)) => {
                        self.say("this session's work dir is gone: no task output kept")
                    }
                    None => {}
                }
            }
            KeyCode::Char('c') => {
                let row = self.detail.as_ref().map(|d| d.row.clone());
                self.ask_cancel(row);
            }
            _ => {}
        }
        Effect::None
    }

    fn task_key(&mut self, k: KeyEvent) -> Effect {
        let page = self.page.max(1);
        let Some(t) = &mut self.task else {
            self.view = View::Session;
            return Effect::None;
        };
        let max = t.text.lines().count().saturating_sub(1) as u16;
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => t.scroll = t.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => t.scroll = (t.scroll + 1).min(max),
            KeyCode::PageUp | KeyCode::Char('b') => t.scroll = t.scroll.saturating_sub(page),
            KeyCode::PageDown | KeyCode::Char(' ') => t.scroll = (t.scroll + page).min(max),
            KeyCode::Home | KeyCode::Char('g') => t.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => t.scroll = max.saturating_sub(page - 1),
            KeyCode::Esc | KeyCode::Left | KeyCode::Char('h') | KeyCode::Backspace => {
                self.view = View::Session;
                self.task = None;
            }
            _ => {}
        }
        Effect::None
    }
}
