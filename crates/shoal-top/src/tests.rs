//! Snapshots of what users read: the `shoal show` report of a known session.

use crate::record::{self, Record};
use crate::report;
use shoal_core::journal::{self, ChunkDone, Journal, SessionEnd, SessionInfo, WorkerEnd};
use shoal_core::session::{SessionMeta, SessionState};
use shoal_core::SessionDir;
use std::path::Path;

pub(crate) const ID: &str = "20260301-090000-5eed00000000c0de";
pub(crate) const STARTED: f64 = 1_772_355_600.0;

/// A Slurm session: 3 workers of array job 7001 on 2 nodes, 40 one-task chunks of 30-75 s,
/// one worker lost holding a chunk (retried elsewhere), 3 failures of 2 kinds, and a fourth
/// worker given back while queued. Ended (failed), or still running a 41st task with its
/// driver alive (this process).
pub(crate) fn sweep(base: &Path, end: bool) -> SessionDir {
    let dir = SessionDir::create(base.join(ID)).unwrap();
    let mut meta = SessionMeta::new(ID.into(), "slurm");
    meta.created = STARTED;
    meta.host = "login1".into();
    meta.pid = 4242;
    meta.metadata = serde_json::json!({"run": 12, "name": "sweep"});
    let info = SessionInfo {
        started: STARTED,
        ..SessionInfo::of(&meta)
    };
    let mut j = Journal::open(&dir, &info).unwrap();
    let workers = ["7001_0", "7001_1", "7001_2", "7001_3"];
    j.set_clock(0);
    j.tasks_total(40);
    for w in workers {
        j.worker_submitted(w, Some("7001"));
    }
    let hosts = ["node01", "node01", "node02"];
    for (i, w) in workers[..3].iter().enumerate() {
        j.set_clock(8_000 + 4_000 * i as u64);
        j.worker_running(w);
        j.set_clock(10_500 + 4_000 * i as u64);
        j.worker_announced(w, hosts[i], 100 + i as u32);
    }
    j.set_clock(19_000);
    j.worker_ended("7001_3", WorkerEnd::Retired, "");
    // Each worker runs chunks back to back; worker 2 dies in its fourth chunk.
    let mut clock = [10_500u64, 14_500, 18_500];
    let mut chunk = 0u64;
    let mut events: Vec<(u64, usize, u64, u64)> = Vec::new();
    while chunk < 40 {
        let w = (0..3).min_by_key(|&w| clock[w]).unwrap();
        if w == 2 && chunk >= 9 && events.iter().filter(|e| e.1 == 2).count() == 3 {
            // Lost holding this chunk; it is retried by whoever is free next.
            j.set_clock(clock[2]);
            j.chunk_started(chunk, workers[2], 1);
            j.set_clock(clock[2] + 20_000);
            j.worker_ended(workers[2], WorkerEnd::Lost, "node02: NODE_FAIL");
            j.chunk_requeued(chunk, workers[2], 1);
            clock[2] = u64::MAX;
            continue;
        }
        let secs = 30_000 + (chunk * 7919) % 45_000;
        j.set_clock(clock[w]);
        j.chunk_started(chunk, workers[w], 1);
        clock[w] += secs;
        j.set_clock(clock[w]);
        let failed = u32::from(matches!(chunk, 5 | 17 | 33));
        j.chunk_finished(&ChunkDone {
            chunk,
            worker: workers[w],
            ntasks: 1,
            nfailed: failed,
            elapsed: secs as f64 / 1000.0 - 0.2,
            ..ChunkDone::default()
        });
        if failed == 1 {
            let err = if chunk == 33 {
                "Traceback (most recent call last):\n  File \"train.py\", line 9, in run\nMemoryError\n"
            } else {
                "Traceback (most recent call last):\n  File \"train.py\", line 4, in run\nValueError: learning rate 0.5 diverged\n"
            };
            j.tasks_failed(chunk, 1, err);
        }
        events.push((clock[w], w, chunk, secs));
        chunk += 1;
    }
    let last = *clock[..2].iter().max().unwrap();
    if end {
        j.set_clock(last + 30_000);
        for w in &workers[..2] {
            j.worker_ended(w, WorkerEnd::Exited, "");
        }
    } else {
        j.set_clock(last + 1_000);
        j.tasks_total(41);
        j.chunk_started(40, workers[0], 1);
        meta.pid = std::process::id();
        meta.host = shoal_core::fsutil::hostname();
        meta.tasks_total = 41;
        meta.tasks_done = 40;
        meta.tasks_failed = 3;
    }
    drop(j);
    if end {
        journal::end_session(
            &dir,
            &SessionEnd {
                at: STARTED + (last + 31_000) as f64 / 1000.0,
                state: "failed".into(),
                message: None,
                tasks_total: 40,
                tasks_done: 40,
                tasks_failed: 3,
            },
        );
        meta.state = SessionState::Failed;
    }
    dir.write_meta(&meta).unwrap();
    dir
}

pub(crate) fn fixed_time(secs: f64) -> String {
    format!("T+{:.0}s", secs - STARTED)
}

fn report_of(rec: &Record, all: bool) -> String {
    let (log, s) = record::summary(rec, 0.0).unwrap();
    report::text(
        rec,
        &log,
        &s,
        &report::Options {
            all,
            time: &fixed_time,
        },
    )
}

#[test]
fn show_a_finished_sweep() {
    let t = tempfile::tempdir().unwrap();
    let (base, history) = (t.path().join("sessions"), t.path().join("history"));
    sweep(&base, true);
    let rec = record::find(&base, &history, "20260301").unwrap();
    insta::assert_snapshot!(report_of(&rec, false));
}

#[test]
fn show_after_the_work_dir_is_gone_reads_the_history_copy() {
    let t = tempfile::tempdir().unwrap();
    let (base, history) = (t.path().join("sessions"), t.path().join("history"));
    let dir = sweep(&base, true);
    let kept = report_of(&record::find(&base, &history, ID).unwrap(), false);
    journal::archive(&dir, &history).unwrap();
    std::fs::remove_dir_all(dir.root()).unwrap();
    let rec = record::find(&base, &history, ID).unwrap();
    assert!(rec.dir.is_none());
    let gone = report_of(&rec, false);
    assert_eq!(
        gone.lines().take(20).collect::<Vec<_>>(),
        kept.lines().take(20).collect::<Vec<_>>(),
        "the same summary from the copy"
    );
    assert!(gone.contains("the work dir was removed"), "{gone}");
}

#[test]
fn show_json_has_the_numbers() {
    let t = tempfile::tempdir().unwrap();
    let (base, history) = (t.path().join("sessions"), t.path().join("history"));
    sweep(&base, true);
    let rec = record::find(&base, &history, ID).unwrap();
    let (log, s) = record::summary(&rec, 0.0).unwrap();
    let v = report::json(&rec, &log, &s);
    assert_eq!(v["tasks"]["total"], 40);
    assert_eq!(v["tasks"]["failed"], 3);
    assert_eq!(v["tasks"]["retried"], 1);
    assert_eq!(v["display_state"], "failed");
    assert_eq!(v["workers"].as_array().unwrap().len(), 4);
    assert_eq!(v["hosts"][1]["host"], "node02");
    assert_eq!(
        v["failures"][0]["message"],
        "ValueError: learning rate 0.5 diverged"
    );
    assert_eq!(v["failures"][0]["tasks"], serde_json::json!([5, 17]));
    assert!(v["durations"]["p95"].as_f64().unwrap() > 60.0);
}

// ---------------------------------------------------------------- shoal top, without a terminal

mod top {
    use super::*;
    use crate::app::{App, Effect, Pane, Target, TaskRef, View};
    use crate::data::Loader;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::style::Color;
    use ratatui::Terminal;

    struct World {
        tmp: tempfile::TempDir,
        loader: Loader,
        app: App,
        now: f64,
    }

    impl World {
        fn new(color: bool) -> World {
            let t = tempfile::tempdir().unwrap();
            let (base, history) = (t.path().join("sessions"), t.path().join("history"));
            sweep(&base, false);
            // An older session that finished and whose work dir is gone.
            let old = SessionDir::create(base.join("20260228-170000-0a0a0a0a0a0a0a0a")).unwrap();
            let mut m = SessionMeta::new("20260228-170000-0a0a0a0a0a0a0a0a".into(), "local");
            m.created = STARTED - 86_400.0;
            let mut j = Journal::open(
                &old,
                &SessionInfo {
                    started: m.created,
                    ..SessionInfo::of(&m)
                },
            )
            .unwrap();
            j.set_clock(1000);
            j.tasks_total(500);
            j.chunk_finished(&ChunkDone {
                chunk: 0,
                worker: "w0001",
                ntasks: 500,
                elapsed: 1.0,
                ..ChunkDone::default()
            });
            drop(j);
            journal::end_session(
                &old,
                &SessionEnd {
                    at: m.created + 2.0,
                    state: "finished".into(),
                    tasks_total: 500,
                    tasks_done: 500,
                    ..SessionEnd::default()
                },
            );
            journal::archive(&old, &history).unwrap();
            std::fs::remove_dir_all(old.root()).unwrap();
            let loader = Loader::new(&base, &history, &t.path().join("runs.db"));
            let mut app = App::new(color);
            app.time = fixed_time;
            let mut w = World {
                tmp: t,
                loader,
                app,
                now: STARTED + 1_000.0,
            };
            w.reload();
            w
        }

        fn reload(&mut self) {
            let rows = self.loader.rows(self.now);
            self.app.set_rows(rows, self.now);
            if self.app.view != View::List {
                let key = self.app.selected_key.clone().unwrap();
                let row = self.app.rows.iter().find(|r| r.key == key).unwrap().clone();
                self.app.detail = Some(self.loader.detail(&row, self.now));
            }
        }

        fn press(&mut self, code: KeyCode) -> Effect {
            let e = self.app.key(KeyEvent::new(code, KeyModifiers::NONE));
            if matches!(e, Effect::Reload) {
                self.reload();
            }
            e
        }

        fn terminal(&mut self) -> Terminal<TestBackend> {
            let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
            t.draw(|f| crate::ui::draw(f, &mut self.app, "nothing here"))
                .unwrap();
            t
        }

        fn screen(&mut self) -> String {
            let t = self.terminal();
            let buf = t.backend().buffer();
            let mut out = String::new();
            for y in 0..buf.area.height {
                let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
                out += line.trim_end();
                out += "\n";
            }
            out.replace(self.tmp.path().to_str().unwrap(), "[TMP]")
        }
    }

    #[test]
    fn the_list_shows_progress_rate_eta_failures_and_state() {
        let mut w = World::new(true);
        insta::assert_snapshot!(w.screen());
    }

    #[test]
    fn a_session_shows_its_workers_and_failed_tasks() {
        let mut w = World::new(true);
        assert!(matches!(w.press(KeyCode::Enter), Effect::Reload));
        assert_eq!(w.app.view, View::Session);
        insta::assert_snapshot!(w.screen());
    }

    #[test]
    fn enter_on_a_failed_task_opens_its_output() {
        let mut w = World::new(true);
        w.press(KeyCode::Enter);
        w.press(KeyCode::Tab);
        assert_eq!(w.app.pane, Pane::Failures);
        w.press(KeyCode::Char('j'));
        match w.press(KeyCode::Enter) {
            Effect::OpenTask(TaskRef::Session(dir, task), title) => {
                assert_eq!((dir.id(), task), (ID.to_string(), 17));
                assert_eq!(title, format!("task 17 of session {ID}"));
            }
            e => panic!("expected OpenTask, got {e:?}"),
        }
    }

    #[test]
    fn cancel_asks_first() {
        let mut w = World::new(true);
        w.press(KeyCode::Char('c'));
        assert!(w.screen().contains(&format!("Cancel session {ID}?")));
        assert!(matches!(w.press(KeyCode::Char('n')), Effect::None));
        assert!(w.app.confirm.is_none());
        w.press(KeyCode::Char('c'));
        match w.press(KeyCode::Char('y')) {
            Effect::Cancel(Target::Session(d)) => assert_eq!(d.id(), ID),
            e => panic!("expected Cancel, got {e:?}"),
        }
        // The ended session cannot be cancelled.
        w.press(KeyCode::Char('j'));
        w.press(KeyCode::Char('c'));
        assert!(w.app.confirm.is_none());
        assert!(w.screen().contains("is finished: nothing to cancel"));
    }

    #[test]
    fn slash_filters_rows_and_workers() {
        let mut w = World::new(true);
        for c in "/local".chars() {
            w.press(KeyCode::Char(c));
        }
        w.press(KeyCode::Enter);
        assert_eq!(w.app.visible().len(), 1);
        assert!(w.screen().contains("filter \"local\""));
        w.press(KeyCode::Esc);
        assert_eq!(w.app.visible().len(), 2);
        w.press(KeyCode::Enter);
        for c in "/node02".chars() {
            w.press(KeyCode::Char(c));
        }
        w.press(KeyCode::Enter);
        let ids: Vec<String> = w.app.workers().iter().map(|w| w.id.clone()).collect();
        assert_eq!(ids, ["7001_2"]);
        w.press(KeyCode::Esc);
        w.press(KeyCode::Esc);
        assert_eq!(w.app.view, View::List);
    }

    #[test]
    fn q_and_ctrl_c_quit_from_every_view() {
        let mut w = World::new(true);
        assert!(matches!(w.press(KeyCode::Char('q')), Effect::Quit));
        w.press(KeyCode::Enter);
        let e = w
            .app
            .key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(matches!(e, Effect::Quit));
    }

    #[test]
    fn a_run_is_one_row_with_its_registry_counts_failed_tasks_and_cancel() {
        use shoal_runs::registry::{NewRun, Outcome};
        let mut w = World::new(true);
        let reg = shoal_runs::Registry::open(&w.tmp.path().join("runs.db")).unwrap();
        let run = reg
            .create_run(
                &NewRun {
                    name: "sweep".into(),
                    command: vec!["train".into(), "{lr}".into()],
                    params: serde_json::json!({"param": ["lr=1,2,3"]}),
                    backend: "slurm".into(),
                    template: None,
                    options: serde_json::json!({}),
                    cwd: w.tmp.path().into(),
                    results_dir: w.tmp.path().join("results"),
                    config_path: None,
                    git: None,
                    experiment: None,
                    overrides: serde_json::json!({}),
                    datasets: serde_json::json!([]),
                    note: None,
                    tags: vec![],
                },
                &[
                    vec![("lr".into(), "1".into())],
                    vec![("lr".into(), "2".into())],
                    vec![("lr".into(), "3".into())],
                ],
            )
            .unwrap();
        let me = shoal_core::fsutil::hostname();
        reg.start_driver(run.id, std::process::id(), &me).unwrap();
        let dir = w.tmp.path().join("sessions").join(ID);
        reg.set_session(run.id, ID, dir.to_str().unwrap()).unwrap();
        let attempt = reg.task(run.id, 1).unwrap().unwrap().attempt;
        reg.record(
            run.id,
            &[Outcome {
                idx: 1,
                attempt,
                state: "failed".into(),
                exit_code: Some(2),
                duration: Some(1.5),
                host: Some("node02".into()),
                ..Outcome::default()
            }],
        )
        .unwrap();
        // The session belongs to the run: it is listed as the run, not twice.
        let sd = SessionDir::open(&dir);
        let mut meta = sd.read_meta().unwrap();
        meta.metadata = serde_json::json!({"run": run.id, "name": "sweep"});
        sd.write_meta(&meta).unwrap();
        w.reload();
        let names: Vec<String> = w.app.visible().iter().map(|r| r.name.clone()).collect();
        assert_eq!(
            names,
            [format!("{} sweep", run.id), "0228-170000-0a0a".into()]
        );
        let screen = w.screen();
        assert!(
            screen.contains(&format!("run {} sweep", run.id)),
            "{screen}"
        );
        assert!(
            screen.contains("1/3 33%") && screen.contains("running"),
            "{screen}"
        );
        w.press(KeyCode::Enter);
        assert!(
            w.screen().contains("exit 2 · node02 · 1.5s"),
            "{}",
            w.screen()
        );
        w.press(KeyCode::Tab);
        match w.press(KeyCode::Enter) {
            Effect::OpenTask(TaskRef::Run(id, 1), title) => {
                assert_eq!(id, run.id);
                assert_eq!(title, format!("task 1 of run {id}"));
            }
            e => panic!("expected the run's task, got {e:?}"),
        }
        w.press(KeyCode::Char('c'));
        match w.press(KeyCode::Char('y')) {
            Effect::Cancel(Target::Run(id)) => assert_eq!(id, run.id),
            e => panic!("expected the run's cancel, got {e:?}"),
        }
    }

    #[test]
    fn no_color_means_no_colour() {
        let coloured = |color: bool| {
            let mut w = World::new(color);
            w.press(KeyCode::Enter);
            let t = w.terminal();
            let buf = t.backend().buffer().clone();
            buf.content()
                .iter()
                .any(|c| c.fg != Color::Reset || c.bg != Color::Reset)
        };
        assert!(coloured(true));
        assert!(!coloured(false), "NO_COLOR: only bold and reverse video");
    }
}
