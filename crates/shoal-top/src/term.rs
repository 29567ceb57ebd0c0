//! The terminal side of `shoal top`: raw mode and the alternate screen (restored on every way
//! out: `q`, Ctrl-C, SIGTERM/SIGHUP, a panic), the refresh loop, and carrying out effects.

use crate::app::{Actions, App, Effect, TaskText, View};
use crate::data::Loader;
use crate::TopError;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::Terminal;
use shoal_core::fsutil::now_secs;
use std::io::{IsTerminal, Stdout};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Restores the terminal when dropped.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

impl Screen {
    fn open() -> Result<Screen, TopError> {
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            return Err(TopError::NotATerminal);
        }
        enable_raw_mode().map_err(TopError::Terminal)?;
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        let mut out = std::io::stdout();
        execute!(out, EnterAlternateScreen).map_err(TopError::Terminal)?;
        let mut terminal = Terminal::new(CrosstermBackend::new(out)).map_err(TopError::Terminal)?;
        terminal.hide_cursor().map_err(TopError::Terminal)?;
        terminal.clear().map_err(TopError::Terminal)?;
        Ok(Screen { terminal })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Checked this often for SIGTERM/SIGHUP and finished cancels, even without keys.
const TICK: Duration = Duration::from_millis(200);

pub fn run(
    base: &Path,
    history: &Path,
    registry: &Path,
    interval: f64,
    actions: Actions,
) -> Result<(), TopError> {
    let interval = Duration::from_secs_f64(interval.clamp(0.2, 60.0));
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let empty = format!(
        "no sessions or runs yet (sessions under {}; `shoal.Pool(...)` or `shoal run` make one)",
        base.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ids: Vec<_> = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP]
        .iter()
        .filter_map(|&s| signal_hook::flag::register(s, stop.clone()).ok())
        .collect();
    let result = (|| {
        let mut screen = Screen::open()?;
        let mut app = App::new(color);
        let mut loader = Loader::new(base, history, registry);
        let actions = Arc::new(actions);
        let (tx, rx) = mpsc::channel::<String>();
        let mut last: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) && !HUNG_UP.load(Ordering::Relaxed) {
            if last.is_none_or(|t| t.elapsed() >= interval) {
                reload(&mut app, &mut loader);
                last = Some(Instant::now());
            }
            while let Ok(msg) = rx.try_recv() {
                app.say(msg);
                last = None;
            }
            screen
                .terminal
                .draw(|f| crate::ui::draw(f, &mut app, &empty))
                .map_err(TopError::Terminal)?;
            let wait = last.map_or(Duration::ZERO, |t| interval.saturating_sub(t.elapsed()));
            if !input_ready(wait.min(TICK)) {
                continue;
            }
            // Every event crossterm has read (a paste or an escape sequence brings several).
            while event::poll(Duration::ZERO).map_err(TopError::Terminal)? {
                let Event::Key(k) = event::read().map_err(TopError::Terminal)? else {
                    continue; // a resize: redrawn above
                };
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match app.key(k) {
                    Effect::None => {}
                    Effect::Quit => return Ok(()),
                    Effect::Reload => last = None,
                    Effect::OpenTask(task, title) => {
                        let text = (actions.task_log)(&task);
                        app.task = Some(TaskText {
                            title,
                            text,
                            scroll: 0,
                        });
                        app.view = View::Task;
                    }
                    Effect::Cancel(target) => {
                        let (actions, tx) = (actions.clone(), tx.clone());
                        std::thread::spawn(move || {
                            let msg = match (actions.cancel)(&target) {
                                Ok(m) => m,
                                Err(e) => {
                                    format!("cancel failed: {}", e.lines().next().unwrap_or(""))
                                }
                            };
                            let _ = tx.send(msg);
                        });
                    }
                }
            }
        }
        Ok(())
    })();
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    result
}

/// Whether keys wait on the terminal, waiting up to `timeout`. Polled here rather than in
/// crossterm: a terminal that hung up (ssh dropped, tmux pane killed) makes crossterm read
/// end-of-file forever; here it is a hang-up, and the loop's stop flag is set.
fn input_ready(timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc <= 0 {
        return false; // timeout, or a signal (the loop checks its flag)
    }
    // A hung-up terminal polls readable with nothing to read (end of file).
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    let ok = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::FIONREAD, &mut pending) } == 0;
    let gone = pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
    if gone || !ok || pending == 0 {
        HUNG_UP.store(true, Ordering::Relaxed);
        return false;
    }
    true
}

/// Set when the terminal hung up; the loop ends.
static HUNG_UP: AtomicBool = AtomicBool::new(false);

fn reload(app: &mut App, loader: &mut Loader) {
    let now = now_secs();
    let rows = loader.rows(now);
    app.set_rows(rows, now);
    if app.view == View::List {
        return;
    }
    let key = app.selected_key.clone();
    let row = key.and_then(|k| app.rows.iter().find(|r| r.key == k).cloned());
    match row {
        Some(row) => app.detail = Some(loader.detail(&row, now)),
        None => {
            app.view = View::List;
            app.detail = None;
            app.say("that session is gone");
        }
    }
}
