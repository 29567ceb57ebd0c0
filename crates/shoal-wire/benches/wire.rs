//! shoal-wire over loopback TLS against plain TCP carrying the same frames, measured in one run.
//!
//! The driver is this process; each worker is a child process (this binary again), so the CPU
//! figures are the driver's alone. Phases: large payloads worker -> driver and driver -> worker,
//! a stream of small frames, task round trips (Assign out, Part back, a window in flight), and
//! joining: connect, handshake, Hello out and the driver's welcome back, one worker at a time.
//!
//! Usage: benches/wire/run [--mib 64] [--count 16] [--small 200000] [--tasks 100000]
//! [--joins 50]

use shoal_wire::*;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const WINDOW: usize = 32;

#[derive(Clone, Copy)]
struct Args {
    mib: usize,
    count: usize,
    small: usize,
    tasks: usize,
    joins: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        mib: 64,
        count: 16,
        small: 200_000,
        tasks: 100_000,
        joins: 50,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--mib" => a.mib = value(),
            "--count" => a.count = value(),
            "--small" => a.small = value(),
            "--tasks" => a.tasks = value(),
            "--joins" => a.joins = value(),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// CPU time of this process (all threads, exited ones included; user and system).
fn cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn spawn_child(args: &[&str], env: Option<(&str, String)>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--child").args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start the worker process")
}

// ---- the worker (child process) -------------------------------------------------------------

fn child(argv: &[String]) {
    let mode = argv[0].as_str();
    let addr = &argv[1];
    let n: usize = argv[2].parse().unwrap();
    let size: usize = argv[3].parse().unwrap();
    if mode.starts_with("raw-") {
        return raw_child(mode, addr, n, size);
    }
    let creds = Credentials::from_env(&argv[4]).unwrap();
    let hello = Hello {
        session: "bench".into(),
        worker: "w1".into(),
        incarnation: 1,
        host: "localhost".into(),
        pid: std::process::id(),
        startup_ms: None,
    };
    if mode == "join" {
        // Each join's latency goes back in its own goodbye.
        for _ in 0..n {
            let t = Instant::now();
            let (_, link) = connect(addr, &creds, &hello, &ClientOptions::default()).unwrap();
            link.close(&t.elapsed().as_micros().to_string());
        }
        return;
    }
    let (_, link) = connect(addr, &creds, &hello, &ClientOptions::default()).unwrap();
    if mode == "upload" {
        println!("cipher suite: {}", link.cipher_suite().unwrap_or_default());
    }
    let started = cpu();
    match mode {
        "upload" => {
            let payload = Bytes::from(vec![7u8; size]);
            for i in 0..n {
                let header = Json::new(&i).unwrap();
                let payload = payload.clone();
                link.send(ToDriver::Part { header, payload }).unwrap();
            }
        }
        "download" => {
            for _ in 0..n {
                match link.recv(Duration::from_secs(60)).unwrap() {
                    Some(ToWorker::Assign { payload, .. }) => assert_eq!(payload.len(), size),
                    other => panic!("expected Assign, got {other:?}"),
                }
            }
        }
        "small" => {
            for i in 0..n as u64 {
                link.send(ToDriver::Started {
                    chunk: i,
                    attempt: 1,
                })
                .unwrap();
            }
        }
        "tasks" => {
            let result = Bytes::from(vec![1u8; size]);
            for _ in 0..n {
                let Some(ToWorker::Assign { header, .. }) =
                    link.recv(Duration::from_secs(60)).unwrap()
                else {
                    panic!("expected Assign")
                };
                let payload = result.clone();
                link.send(ToDriver::Part { header, payload }).unwrap();
            }
        }
        _ => panic!("unknown mode {mode}"),
    }
    // The driver says when it has everything; only then is this side's work done.
    loop {
        match link.recv(Duration::from_secs(60)).unwrap() {
            Some(ToWorker::Stop { .. }) => break,
            Some(_) => {}
            None => panic!("no Stop from the driver"),
        }
    }
    let spent = cpu().saturating_sub(started);
    link.close(&format!("{}", spent.as_micros()));
}

fn raw_child(mode: &str, addr: &str, n: usize, size: usize) {
    if mode == "raw-join" {
        // Connect, a hello-sized frame out, one byte back; the latency follows as 8 bytes.
        let hello = vec![3u8; size];
        for _ in 0..n {
            let t = Instant::now();
            let tcp = TcpStream::connect(addr).unwrap();
            tcp.set_nodelay(true).unwrap();
            (&tcp).write_all(&hello).unwrap();
            (&tcp).read_exact(&mut [0u8; 1]).unwrap();
            let us = t.elapsed().as_micros() as u64;
            (&tcp).write_all(&us.to_le_bytes()).unwrap();
        }
        return;
    }
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let started = cpu();
    match mode {
        "raw-upload" => write_raw_frames(&tcp, n, size),
        "raw-download" => read_raw_frames(&tcp, n),
        "raw-small" => {
            let mut w = BufWriter::with_capacity(64 * 1024, &tcp);
            for i in 0..n {
                let head = format!(r#"{{"chunk":{i},"attempt":1}}"#);
                w.write_all(&raw_prefix(head.len(), 0)).unwrap();
                w.write_all(head.as_bytes()).unwrap();
            }
            w.flush().unwrap();
        }
        _ => panic!("unknown mode {mode}"),
    }
    if mode != "raw-download" {
        // The driver says when it has read everything.
        let mut byte = [0u8; 1];
        (&tcp).read_exact(&mut byte).unwrap();
    }
    let spent = cpu().saturating_sub(started).as_micros() as u64;
    (&tcp).write_all(&spent.to_le_bytes()).unwrap();
}

/// Write `n` frames of `size` payload bytes straight from one buffer, as the wire's writer does.
fn write_raw_frames(tcp: &TcpStream, n: usize, size: usize) {
    let payload = vec![7u8; size];
    let mut w = tcp;
    for i in 0..n {
        let head = format!("{i}");
        w.write_all(&raw_prefix(head.len(), size)).unwrap();
        w.write_all(head.as_bytes()).unwrap();
        w.write_all(&payload).unwrap();
    }
}

/// Read `n` frames, each payload into a fresh buffer as the wire's decoder does.
fn read_raw_frames(tcp: &TcpStream, n: usize) {
    let mut r = BufReader::with_capacity(256 * 1024, tcp);
    for _ in 0..n {
        let mut p = [0u8; PREFIX_LEN];
        r.read_exact(&mut p).unwrap();
        let head = u32::from_le_bytes(p[6..10].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(p[10..18].try_into().unwrap()) as usize;
        let mut h = vec![0u8; head];
        r.read_exact(&mut h).unwrap();
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).unwrap();
    }
}

fn raw_prefix(head: usize, payload: usize) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[..4].copy_from_slice(b"SHWL");
    p[4] = 1;
    p[5] = 11;
    p[6..10].copy_from_slice(&(head as u32).to_le_bytes());
    p[10..18].copy_from_slice(&(payload as u64).to_le_bytes());
    p
}

// ---- the driver (this process) --------------------------------------------------------------

struct Run {
    wall: Duration,
    cpu: Duration,
    worker_cpu: Duration,
}

fn admit(server: &Server) -> PeerId {
    loop {
        match server
            .events()
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
        {
            Event::Connected { peer, .. } => {
                server.admit(peer, Json::from_text("{}").unwrap());
                return peer;
            }
            Event::Rejected(r) => panic!("{r}"),
            _ => {}
        }
    }
}

/// Events until `done` says the phase is complete; returns the wall time to that point.
fn until(server: &Server, t0: Instant, mut on: impl FnMut(&ToDriver) -> bool) -> Duration {
    loop {
        match server
            .events()
            .recv_timeout(Duration::from_secs(60))
            .unwrap()
        {
            Event::Message(_, msg) if on(&msg) => return t0.elapsed(),
            Event::Disconnected(_, why) => panic!("worker lost: {why}"),
            _ => {}
        }
    }
}

/// Tell the worker to stop and read the CPU time it reports in its Bye.
fn worker_cpu(server: &Server, peer: PeerId) -> Duration {
    server
        .send(peer, ToWorker::Stop { graceful: true })
        .unwrap();
    let mut cpu = Duration::ZERO;
    until(server, Instant::now(), |msg| match msg {
        ToDriver::Bye { reason } => {
            cpu = Duration::from_micros(reason.parse().unwrap());
            true
        }
        _ => false,
    });
    cpu
}

/// A driver on loopback, with the address and certificate fingerprint its workers need.
fn loopback() -> (SessionSecrets, Server, String, String) {
    let secrets = SessionSecrets::generate().unwrap();
    let options = ServerOptions {
        bind: "127.0.0.1".parse().unwrap(),
        ..ServerOptions::default()
    };
    let server = Server::start(options, &secrets).unwrap();
    let addr = server.advertised_addr().to_string();
    let fp = secrets.credentials().fingerprint_text();
    (secrets, server, addr, fp)
}

fn wire(mode: &str, n: usize, size: usize) -> Run {
    let (secrets, server, addr, fp) = loopback();
    let args = [mode, &addr, &n.to_string(), &size.to_string(), &fp];
    let mut worker = spawn_child(&args, Some(secrets.credentials().to_env()));
    let peer = admit(&server);
    let (t0, c0) = (Instant::now(), cpu());
    let wall = match mode {
        "upload" | "small" => {
            let mut got = 0;
            until(&server, t0, |msg| {
                if let ToDriver::Part { payload, .. } = msg {
                    assert_eq!(payload.len(), size);
                }
                got += 1;
                got == n
            })
        }
        "download" => {
            let payload = Bytes::from(vec![9u8; size]);
            for i in 0..n {
                let mut msg = ToWorker::Assign {
                    header: Json::new(&i).unwrap(),
                    payload: payload.clone(),
                };
                loop {
                    match server.send(peer, msg) {
                        Ok(()) => break,
                        Err(SendError::Full(m)) => {
                            msg = m;
                            let _ = server.events().recv_timeout(Duration::from_millis(50));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            // The worker has them all once it answers the Stop queued behind them.
            let cpu = worker_cpu(&server, peer);
            let run = Run {
                wall: t0.elapsed(),
                cpu: self::cpu().saturating_sub(c0),
                worker_cpu: cpu,
            };
            worker.wait().unwrap();
            return run;
        }
        "tasks" => {
            let calls = Bytes::from(vec![2u8; size]);
            let assign = |i: usize| ToWorker::Assign {
                header: Json::new(&serde_json::json!({"chunk": i, "first": i, "n": 1})).unwrap(),
                payload: calls.clone(),
            };
            let mut sent = 0;
            while sent < n.min(WINDOW) {
                server.send(peer, assign(sent)).unwrap();
                sent += 1;
            }
            let mut done = 0;
            until(&server, t0, |msg| {
                let ToDriver::Part { header, .. } = msg else {
                    return false;
                };
                let _: serde_json::Value = header.parse().unwrap();
                done += 1;
                if sent < n {
                    server.send(peer, assign(sent)).unwrap();
                    sent += 1;
                }
                done == n
            })
        }
        _ => unreachable!(),
    };
    let cpu = cpu().saturating_sub(c0);
    let run = Run {
        wall,
        cpu,
        worker_cpu: worker_cpu(&server, peer),
    };
    worker.wait().unwrap();
    run
}

/// `n` workers joining one after another: the mean latency each saw, connect to welcome.
fn joins(n: usize) -> Duration {
    let (secrets, server, addr, fp) = loopback();
    let args = ["join", &addr, &n.to_string(), "0", &fp];
    let mut worker = spawn_child(&args, Some(secrets.credentials().to_env()));
    let (mut seen, mut total) = (0, Duration::ZERO);
    while seen < n {
        match server
            .events()
            .recv_timeout(Duration::from_secs(60))
            .unwrap()
        {
            Event::Connected { peer, .. } => {
                server.admit(peer, Json::from_text("{}").unwrap());
            }
            Event::Message(_, ToDriver::Bye { reason }) => {
                total += Duration::from_micros(reason.parse().unwrap());
                seen += 1;
            }
            Event::Rejected(r) => panic!("{r}"),
            _ => {}
        }
    }
    worker.wait().unwrap();
    total / n as u32
}

/// The same over plain TCP: connect, a hello-sized frame, one byte back.
fn raw_joins(n: usize) -> Duration {
    const HELLO: usize = 200;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let args = ["raw-join", &addr, &n.to_string(), &HELLO.to_string()];
    let mut worker = spawn_child(&args, None);
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nodelay(true).unwrap();
        (&tcp).read_exact(&mut [0u8; HELLO]).unwrap();
        (&tcp).write_all(b"w").unwrap();
        let mut us = [0u8; 8];
        (&tcp).read_exact(&mut us).unwrap();
        total += Duration::from_micros(u64::from_le_bytes(us));
    }
    worker.wait().unwrap();
    total / n as u32
}

fn raw(mode: &str, n: usize, size: usize) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let args = [mode, &addr, &n.to_string(), &size.to_string()];
    let mut worker = spawn_child(&args, None);
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_nodelay(true).unwrap();
    let (t0, c0) = (Instant::now(), cpu());
    if mode == "raw-download" {
        write_raw_frames(&tcp, n, size);
    } else {
        read_raw_frames(&tcp, n);
        (&tcp).write_all(b"x").unwrap();
    }
    let mut spent = [0u8; 8];
    (&tcp).read_exact(&mut spent).unwrap();
    let run = Run {
        wall: t0.elapsed(),
        cpu: cpu().saturating_sub(c0),
        worker_cpu: Duration::from_micros(u64::from_le_bytes(spent)),
    };
    worker.wait().unwrap();
    run
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn row(label: &str, wire: f64, plain: Option<f64>, unit: &str) {
    match plain {
        Some(p) => println!(
            "  {label:<40} {wire:>9.2} {unit:<6} {p:>9.2} {unit:<6} {:>7.2}",
            wire / p
        ),
        None => println!("  {label:<40} {wire:>9.2} {unit:<6} {:>16} {:>7}", "-", "-"),
    }
}

fn header(title: &str) {
    println!(
        "\n{title:<42} {:>16} {:>16} {:>7}",
        "wire (TLS 1.3)", "plain TCP", "ratio"
    );
}

fn bulk(title: &str, total: usize, wire: &Run, plain: &Run) {
    header(title);
    let gb = total as f64 / 1e9;
    let per_core = |r: &Run| gb / r.cpu.max(r.worker_cpu).as_secs_f64();
    row(
        "wall",
        gbps(total, wire.wall),
        Some(gbps(total, plain.wall)),
        "GB/s",
    );
    row(
        "per core of the busier side",
        per_core(wire),
        Some(per_core(plain)),
        "GB/s",
    );
    let driver = |r: &Run| r.cpu.as_secs_f64() / gb;
    let worker = |r: &Run| r.worker_cpu.as_secs_f64() / gb;
    row("driver CPU", driver(wire), Some(driver(plain)), "s/GB");
    row("worker CPU", worker(wire), Some(worker(plain)), "s/GB");
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        return child(&argv[2..]);
    }
    let a = parse_args();
    let size = a.mib << 20;
    let total = a.count * size;
    println!(
        "shoal-wire over loopback vs plain TCP carrying the same frames, measured in one run;"
    );
    println!("the driver is this process, the worker a child process (CPU: user + system).");

    let up = wire("upload", a.count, size);
    let up_plain = raw("raw-upload", a.count, size);
    bulk(
        &format!("{} x {} MiB payloads, worker -> driver", a.count, a.mib),
        total,
        &up,
        &up_plain,
    );
    let down = wire("download", a.count, size);
    let down_plain = raw("raw-download", a.count, size);
    bulk(
        &format!("{} x {} MiB payloads, driver -> worker", a.count, a.mib),
        total,
        &down,
        &down_plain,
    );

    let small = wire("small", a.small, 0);
    let small_plain = raw("raw-small", a.small, 0);
    header(&format!(
        "{} small frames (Started), worker -> driver",
        a.small
    ));
    let us = |d: Duration| per(d, a.small);
    row(
        "wall per frame",
        us(small.wall),
        Some(us(small_plain.wall)),
        "µs",
    );
    row(
        "driver CPU per frame",
        us(small.cpu),
        Some(us(small_plain.cpu)),
        "µs",
    );
    let (w, p) = (us(small.worker_cpu), us(small_plain.worker_cpu));
    row("worker CPU per frame", w, Some(p), "µs");

    let tasks = wire("tasks", a.tasks, 100);
    header(&format!(
        "{} tasks: Assign out, Part back, {WINDOW} in flight",
        a.tasks
    ));
    let rate = a.tasks as f64 / tasks.wall.as_secs_f64() / 1000.0;
    row("tasks per second (thousands)", rate, None, "k/s");
    row("driver CPU per task", per(tasks.cpu, a.tasks), None, "µs");
    row(
        "worker CPU per task",
        per(tasks.worker_cpu, a.tasks),
        None,
        "µs",
    );

    let (join, join_plain) = (joins(a.joins), raw_joins(a.joins));
    header(&format!("{} workers joining, one at a time", a.joins));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    row("connect to welcome", ms(join), Some(ms(join_plain)), "ms");
    println!(
        "\n(issue 13 budgets 20 µs of driver CPU per task for the whole driver, engine included)"
    );
}
