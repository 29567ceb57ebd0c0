//! Drawing `shoal top`'s views with ratatui. Pure: an [`App`] in, a frame out. Laid out for
//! 80×24 and wider; colours only where `NO_COLOR` is unset, selection shown by reverse video.

use crate::app::{App, Pane, View};
use crate::data::Key;
use crate::fmt::{age, clip, count, dur, opt_dur, rate, short_id};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row as TRow, Table, TableState, Wrap};
use ratatui::Frame;
use shoal_core::journal::WorkerStatus;

fn fg(app: &App, c: Color) -> Style {
    if app.color {
        Style::default().fg(c)
    } else {
        Style::default()
    }
}

fn state_color(state: &str) -> Color {
    match state {
        "running" => Color::Cyan,
        "finished" => Color::Green,
        "failed" | "lost" | "fenced" => Color::Red,
        "cancelled" | "interrupted" | "queued" | "starting" | "pending" => Color::Yellow,
        "orphaned" => Color::Magenta,
        _ => Color::Reset,
    }
}

fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

pub fn draw(f: &mut Frame<'_>, app: &mut App, empty: &str) {
    let [body, foot] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
    match app.view {
        View::List => list(f, app, body, empty),
        View::Session => session(f, app, body),
        View::Task => task(f, app, body),
    }
    footer(f, app, foot);
    if app.confirm.is_some() {
        confirm(f, app);
    }
}

/// `4,210/10k 42%`: compact enough for the list's progress column.
fn short_progress(done: u64, total: u64) -> String {
    let n = |v: u64| {
        if v >= 1_000_000 {
            format!("{:.1}M", v as f64 / 1e6)
        } else if v >= 10_000 {
            format!("{}k", v / 1000)
        } else {
            v.to_string()
        }
    };
    if total == 0 {
        return format!("{}/-", n(done));
    }
    let pct = (100.0 * done as f64 / total as f64).floor();
    format!("{}/{} {pct:.0}%", n(done), n(total))
}

fn list(f: &mut Frame<'_>, app: &mut App, area: Rect, empty: &str) {
    let [title, table_area, about] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(4),
    ])
    .areas(area);
    let visible = app.visible();
    let live = visible.iter().filter(|r| r.live).count();
    let head = format!(
        " shoal top · {} sessions and runs · {live} live{}",
        visible.len(),
        if app.filter.is_empty() {
            String::new()
        } else {
            format!(" · filter \"{}\"", app.filter)
        }
    );
    f.render_widget(Paragraph::new(head).style(bold()), title);
    if visible.is_empty() {
        f.render_widget(Paragraph::new(format!("\n  {empty}")), table_area);
        return;
    }
    let rows: Vec<TRow<'_>> = visible
        .iter()
        .map(|r| {
            let name = match &r.key {
                Key::Run(_) => format!("run {}", r.name),
                Key::Session(id) if r.name == short_id(id) => r.name.clone(),
                Key::Session(_) => r.name.clone(),
            };
            let fail = if r.failed > 0 {
                Span::styled(count(r.failed), fg(app, Color::Red))
            } else {
                Span::raw("0")
            };
            TRow::new(vec![
                Span::raw(name),
                Span::raw(r.backend.clone()),
                Span::raw(short_progress(r.done, r.total)),
                Span::raw(if r.live { rate(r.rate) } else { "-".into() }),
                Span::raw(r.eta.map_or("-".into(), dur)),
                fail,
                Span::raw(age(app.now - r.created)),
                Span::styled(r.state.clone(), fg(app, state_color(&r.state))),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(11),
    ];
    let header = TRow::new([
        "NAME/ID", "BACKEND", "PROGRESS", "RATE", "ETA", "FAIL", "AGE", "STATE",
    ])
    .style(bold());
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(selected())
        .column_spacing(1);
    app.page = table_area.height.saturating_sub(2).max(1);
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(table, table_area, &mut state);
    if let Some(r) = app.selected_row() {
        f.render_widget(
            Paragraph::new(about_row(r, (app.time)(r.created)))
                .block(Block::default().borders(Borders::TOP)),
            about,
        );
    }
}

/// The selected row in full: id, where its record is, how it ended.
fn about_row(r: &crate::data::Row, when: String) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    match (&r.key, &r.session) {
        (Key::Run(id), s) => {
            let dir = r
                .run
                .as_ref()
                .map_or(String::new(), |run| run.run_dir.clone());
            lines.push(Line::raw(format!(
                " run {id} · started {when} · results {dir}"
            )));
            if let Some(s) = s {
                lines.push(Line::raw(format!(" session {}", s.id)));
            }
        }
        (Key::Session(id), s) => {
            lines.push(Line::raw(format!(" {id} · started {when}")));
            let at = s.as_ref().map_or("-".to_string(), |s| match &s.dir {
                Some(d) => d.root().display().to_string(),
                None => "work dir removed; summary from history".to_string(),
            });
            lines.push(Line::raw(format!(" {at}")));
        }
    }
    let message = r
        .session
        .as_ref()
        .and_then(|s| s.meta.as_ref())
        .and_then(|m| m.message.clone())
        .or_else(|| r.run.as_ref().and_then(|run| run.message.clone()));
    if let Some(m) = message {
        lines.push(Line::raw(format!(" {}", m.lines().next().unwrap_or(""))));
    }
    lines
}

fn session(f: &mut Frame<'_>, app: &mut App, area: Rect) {
    let Some(d) = &app.detail else {
        f.render_widget(Paragraph::new(" loading…"), area);
        return;
    };
    let row = &d.row;
    let id = match &row.key {
        Key::Session(id) => format!("session {id}"),
        Key::Run(_) => format!(
            "run {}{}",
            row.name,
            row.session
                .as_ref()
                .map_or(String::new(), |s| format!(" · session {}", short_id(&s.id)))
        ),
    };
    let mut lines = vec![Line::from(vec![
        Span::styled(format!(" {id}"), bold()),
        Span::raw(format!(" · {} · ", row.backend)),
        Span::styled(row.state.clone(), fg(app, state_color(&row.state))),
    ])];
    let s = d.summary.as_ref();
    let mut tasks = format!(
        " tasks {}",
        crate::fmt::progress(row.done, row.total.max(row.done))
    );
    if row.failed > 0 {
        tasks += &format!(" · {} failed", count(row.failed));
    }
    if let Some(s) = s {
        if s.tasks.retried > 0 {
            tasks += &format!(" · {} retried", count(s.tasks.retried));
        }
        if row.live {
            tasks += &format!(" · {}", rate(s.recent_rate));
        }
        if let Some(eta) = s.eta.filter(|_| row.live) {
            tasks += &format!(" · ETA {}", dur(eta));
        }
        tasks += &format!(" · up {}", dur(s.elapsed));
    }
    lines.push(Line::raw(tasks));
    match s {
        Some(s) => {
            let by: Vec<String> = [
                WorkerStatus::Running,
                WorkerStatus::Idle,
                WorkerStatus::Starting,
                WorkerStatus::Queued,
                WorkerStatus::Lost,
                WorkerStatus::Fenced,
                WorkerStatus::Exited,
                WorkerStatus::Retired,
            ]
            .iter()
            .filter_map(|st| {
                s.workers_by_status
                    .get(st)
                    .map(|n| format!("{n} {}", st.as_str()))
            })
            .collect();
            let wait = s.queue_wait.as_ref().map_or(String::new(), |q| {
                format!(" · queue wait p50 {}", dur(q.p50))
            });
            lines.push(Line::raw(format!(" workers {}{wait}", by.join(" · "))));
        }
        None => lines.push(Line::raw(" (no journal: workers unknown)")),
    }
    let failures = app.failures();
    let nf = failures.len();
    let [head, wa, fa] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length(if nf == 0 {
            3
        } else {
            (nf as u16 + 3).clamp(4, 9)
        }),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(lines), head);

    let focus = |p: Pane| {
        if app.pane == p {
            bold()
        } else {
            Style::default()
        }
    };
    let now_rel = s.map_or(0.0, |s| s.elapsed);
    let workers = app.workers();
    let wrows: Vec<TRow<'_>> = workers
        .iter()
        .map(|w| {
            let doing = match (w.current, &w.reason) {
                (Some((c, since)), _) => format!("chunk {c} for {}", dur(now_rel - since)),
                (None, Some(r)) => r.clone(),
                _ => String::new(),
            };
            TRow::new(vec![
                Span::raw(w.id.clone()),
                Span::raw(w.job.clone().unwrap_or_else(|| "-".into())),
                Span::raw(w.host.clone().unwrap_or_else(|| "-".into())),
                Span::styled(w.status.as_str(), fg(app, state_color(w.status.as_str()))),
                Span::raw(count(w.tasks)),
                Span::raw(rate(w.rate)),
                Span::raw(opt_dur(w.queue_wait)),
                Span::raw(doing),
            ])
        })
        .collect();
    // Sized to the data: ids, job ids and host names vary a lot between backends.
    let widest =
        |f: &dyn Fn(&&shoal_core::journal::WorkerSummary) -> usize, head: usize, max: usize| {
            workers.iter().map(f).max().unwrap_or(0).clamp(head, max) as u16
        };
    let wtable = Table::new(
        wrows,
        [
            Constraint::Length(widest(&|w| w.id.chars().count(), 6, 16)),
            Constraint::Length(widest(
                &|w| w.job.as_deref().map_or(1, |j| j.chars().count()),
                3,
                12,
            )),
            Constraint::Length(widest(
                &|w| w.host.as_deref().map_or(1, |h| h.chars().count()),
                4,
                16,
            )),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Min(8),
        ],
    )
    .header(
        TRow::new([
            "WORKER", "JOB", "HOST", "STATE", "TASKS", "RATE", "WAIT", "NOW",
        ])
        .style(bold()),
    )
    .column_spacing(1)
    .row_highlight_style(if app.pane == Pane::Workers {
        selected()
    } else {
        Style::default()
    })
    .block(Block::default().borders(Borders::ALL).title(Span::styled(
        format!(" Workers ({}) ", workers.len()),
        focus(Pane::Workers),
    )));
    let mut ws = TableState::default().with_selected(Some(app.worker_sel));
    let page = wa.height.saturating_sub(3).max(1);
    f.render_stateful_widget(wtable, wa, &mut ws);

    let frows: Vec<TRow<'_>> = if failures.is_empty() {
        vec![TRow::new(["  no failed tasks"])]
    } else {
        failures
            .iter()
            .map(|(_, l)| TRow::new([Span::styled(l.clone(), fg(app, Color::Red))]))
            .collect()
    };
    let ftable = Table::new(frows, [Constraint::Percentage(100)])
        .row_highlight_style(if app.pane == Pane::Failures && nf > 0 {
            selected()
        } else {
            Style::default()
        })
        .block(Block::default().borders(Borders::ALL).title(Span::styled(
            format!(" Failed tasks ({nf}) "),
            focus(Pane::Failures),
        )));
    let mut fs = TableState::default().with_selected(Some(app.failure_sel));
    f.render_stateful_widget(ftable, fa, &mut fs);
    app.page = page;
}

fn task(f: &mut Frame<'_>, app: &mut App, area: Rect) {
    let Some(t) = &app.task else { return };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(format!(" {} ", t.title), bold()));
    let inner = block.inner(area);
    app.page = inner.height.max(1);
    let p = Paragraph::new(t.text.clone())
        .block(block)
        .wrap(Wrap { trim: false })
        .scroll((t.scroll, 0));
    f.render_widget(p, area);
}

fn footer(f: &mut Frame<'_>, app: &App, area: Rect) {
    let text = if app.filtering {
        format!(" filter: {}▏  (Enter keep · Esc clear)", app.filter)
    } else if let Some(s) = app.status_line() {
        format!(" {s}")
    } else {
        match app.view {
            View::List => " ↑↓/jk move · Enter open · / filter · c cancel · q quit",
            View::Session => {
                " ↑↓/jk move · Tab pane · Enter output · / filter · c cancel · Esc back · q quit"
            }
            View::Task => " ↑↓/jk scroll · PgUp/PgDn page · g/G top/end · Esc back · q quit",
        }
        .to_string()
    };
    let text = clip(&text, area.width as usize);
    f.render_widget(Paragraph::new(text).style(selected()), area);
}

fn confirm(f: &mut Frame<'_>, app: &App) {
    let Some(c) = &app.confirm else { return };
    let area = f.area();
    let w = area.width.saturating_sub(4).min(70);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + area.height.saturating_sub(7) / 2,
        width: w,
        height: 7.min(area.height),
    };
    let text = vec![
        Line::raw(format!("Cancel {}?", clip(&c.what, w as usize - 12))),
        Line::raw("Its workers are stopped and its unfinished tasks fail."),
        Line::raw(""),
        Line::from(vec![
            Span::styled("y", bold()),
            Span::raw(" cancel it · any other key: keep it running"),
        ]),
    ];
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(Span::styled(
            " cancel? ",
            fg(app, Color::Yellow).add_modifier(Modifier::BOLD),
        ))),
        r,
    );
}
