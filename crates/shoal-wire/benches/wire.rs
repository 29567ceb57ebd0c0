//! shoal-wire over loopback TLS against plain TCP carrying the same frames, measured in one run.
//!
//! The driver is this process; each worker is a child process (this binary again), so the CPU
//! figures are the driver's alone. Phases: large payloads worker -> driver and driver -> worker,
//! a stream of small frames, and task round trips (Assign out, Part back, a window in flight).
//!
//! Usage: benches/wire/run [--mib 64] [--count 16] [--small 200000] [--tasks 100000]

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
}

fn parse_args() -> Args {
    let mut a = Args {
        mib: 64,
        count: 16,
        small: 200_000,
        tasks: 100_000,
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
    let creds = Credentials::from_env().unwrap();
    let hello = Hello {
        session: "bench".into(),
        worker: "w1".into(),
        incarnation: 1,
        host: "localhost".into(),
        pid: std::process::id(),
    };
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
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    match mode {
        "raw-upload" => {
            let payload = vec![7u8; size];
            let mut w = &tcp;
            for i in 0..n {
                let head = format!("{i}");
                w.write_all(&raw_prefix(head.len(), size)).unwrap();
                w.write_all(head.as_bytes()).unwrap();
                w.write_all(&payload).unwrap();
            }
        }
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
    // Wait for the driver to finish reading before closing.
    let mut byte = [0u8; 1];
    let _ = (&tcp).read(&mut byte);
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

fn wire(mode: &str, n: usize, size: usize) -> Run {
    let secrets = SessionSecrets::generate().unwrap();
    let options = ServerOptions {
        bind: "127.0.0.1".parse().unwrap(),
        ..ServerOptions::default()
    };
    let server = Server::start(options, &secrets).unwrap();
    let addr = server.advertised_addr().to_string();
    let args = [mode, &addr, &n.to_string(), &size.to_string()];
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

fn raw(mode: &str, n: usize, size: usize) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let args = [mode, &addr, &n.to_string(), &size.to_string()];
    let mut worker = spawn_child(&args, None);
    let (tcp, _) = listener.accept().unwrap();
    let (t0, c0) = (Instant::now(), cpu());
    let mut r = BufReader::with_capacity(256 * 1024, &tcp);
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
    let run = Run {
        wall: t0.elapsed(),
        cpu: cpu().saturating_sub(c0),
        worker_cpu: Duration::ZERO,
    };
    (&tcp).write_all(b"x").unwrap();
    worker.wait().unwrap();
    run
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        return child(&argv[2..]);
    }
    let a = parse_args();
    let size = a.mib << 20;
    let total = a.count * size;
    println!("shoal-wire over loopback TLS 1.3 (ring, AES-GCM) vs plain TCP with the same frames");
    println!("driver = this process, worker = a child process; one run, medians not needed at these sizes\n");

    let up = wire("upload", a.count, size);
    let up_raw = raw("raw-upload", a.count, size);
    let down = wire("download", a.count, size);
    println!(
        "{} x {} MiB payloads           wire         plain TCP    wire/plain",
        a.count, a.mib
    );
    println!(
        "  worker -> driver           {:6.2} GB/s  {:6.2} GB/s  {:5.2}   (driver CPU {:.2} s/GB, worker CPU {:.2} s/GB)",
        gbps(total, up.wall),
        gbps(total, up_raw.wall),
        gbps(total, up.wall) / gbps(total, up_raw.wall),
        up.cpu.as_secs_f64() / (total as f64 / 1e9),
        up.worker_cpu.as_secs_f64() / (total as f64 / 1e9),
    );
    println!(
        "  driver -> worker           {:6.2} GB/s  {:>11}  {:>5}   (driver CPU {:.2} s/GB, worker CPU {:.2} s/GB)",
        gbps(total, down.wall),
        "-",
        "-",
        down.cpu.as_secs_f64() / (total as f64 / 1e9),
        down.worker_cpu.as_secs_f64() / (total as f64 / 1e9),
    );

    let small = wire("small", a.small, 0);
    let small_raw = raw("raw-small", a.small, 0);
    println!(
        "\n{} small frames (Started, ~30 B)   wire        plain TCP   wire/plain",
        a.small
    );
    println!(
        "  wall per frame             {:6.2} µs    {:6.2} µs    {:5.2}",
        per(small.wall, a.small),
        per(small_raw.wall, a.small),
        per(small.wall, a.small) / per(small_raw.wall, a.small),
    );
    println!(
        "  driver CPU per frame       {:6.2} µs    {:6.2} µs    {:5.2}   (worker CPU {:.2} µs)",
        per(small.cpu, a.small),
        per(small_raw.cpu, a.small),
        per(small.cpu, a.small) / per(small_raw.cpu, a.small).max(1e-9),
        per(small.worker_cpu, a.small),
    );

    let tasks = wire("tasks", a.tasks, 100);
    println!(
        "\n{} task round trips (Assign 100 B out, Part 100 B back, {WINDOW} in flight)",
        a.tasks
    );
    println!(
        "  {:.0} tasks/s; driver CPU {:.2} µs per task (target of issue 13 for the whole driver: 20 µs); worker CPU {:.2} µs",
        a.tasks as f64 / tasks.wall.as_secs_f64(),
        per(tasks.cpu, a.tasks),
        per(tasks.worker_cpu, a.tasks),
    );
}
