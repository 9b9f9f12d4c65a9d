//! The binary under load: 64 pipelining clients with every request answered once, in order,
//! within the memory budget; the small model with `serve`'s default limits; SIGTERM under load
//! answering every request it accepted.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{fixtures, TempDir};
use crate::harness::{code, stopped_counts, Client, Process};

/// Clients per load test.
const CLIENTS: usize = 64;
/// Requests per client: 64,000 short texts, ~4,000/s on 2 cores.
const REQUESTS_PER_CLIENT: usize = 1_000;

/// One client of the load tests: sends `n` requests with up to 4 in flight, checks every
/// answer's id and order. Returns how many answers came back (fewer only after shutdown).
fn load_client(path: &Path, client: usize, n: usize, stop_on_eof: bool) -> usize {
    let mut c = Client::connect(path);
    let mut writer = c.writer.try_clone().unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("c{client}-{i}")).collect();
    let to_send = ids.clone();
    let sender = std::thread::spawn(move || {
        for (i, id) in to_send.iter().enumerate() {
            let text = ["你好", "今天天气很好", "我爱北京天安门", "边缘设备"][i % 4];
            let line = format!("{{\"id\":\"{id}\",\"text\":\"{text}\"}}\n");
            if writer.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    let mut got = 0;
    while got < n {
        match c.recv() {
            Some(a) => {
                assert_eq!(a["id"], ids[got].as_str(), "answer out of order: {a}");
                assert_eq!(code(&a), None, "error under load: {a}");
                assert!(a["tokens"].is_array());
                got += 1;
            }
            None if stop_on_eof => break,
            None => panic!("client {client}: stream ended after {got} answers"),
        }
    }
    if !stop_on_eof {
        c.writer.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.recv().is_none(), "no extra answers");
    }
    let _ = sender.join();
    got
}

/// `serve` for the 64 clients: 2 workers, a queue that holds 4 requests of each, and room for
/// the readiness ping's and a stats connection beside them (the server may still count the
/// ping's for a moment after `Process::start` closed it).
fn start_for_clients(dir: &Path, extra: &[&str]) -> Process {
    let mut args = vec![
        "--workers",
        "2",
        "--max-queue",
        "256",
        "--max-connections",
        "66",
    ];
    args.extend_from_slice(extra);
    Process::start(dir, &args)
}

#[test]
fn load_64_clients_every_request_answered_once_within_budget() {
    let dir = TempDir::new("load");
    // 64 clients pipelining 4 deep = 256 requests at once: the queue holds them all.
    let server = start_for_clients(dir.path(), &["--max-chars", "2000"]);
    let budget = {
        let mut c = Client::connect(&server.path);
        c.ask(r#"{"cmd":"stats"}"#)["stats"]["budget"]["total"]
            .as_u64()
            .unwrap()
    };
    let started = Instant::now();
    let path = server.path.clone();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || load_client(&path, i, REQUESTS_PER_CLIENT, false))
        })
        .collect();
    // RSS sampled while the load runs.
    let mut samples = vec![];
    while !clients.iter().all(|c| c.is_finished()) {
        samples.push(server.vm("VmRSS:"));
        std::thread::sleep(Duration::from_millis(200));
    }
    for c in clients {
        assert_eq!(c.join().unwrap(), REQUESTS_PER_CLIENT);
    }
    let elapsed = started.elapsed();
    let total = CLIENTS * REQUESTS_PER_CLIENT;
    eprintln!(
        "load: {total} requests from {CLIENTS} clients in {elapsed:.1?} ({:.0}/s)",
        total as f64 / elapsed.as_secs_f64()
    );
    let stats = Client::connect(&server.path).ask(r#"{"cmd":"stats"}"#)["stats"].clone();
    assert_eq!(stats["inferences"], total as u64);
    assert_eq!(stats["errors"]["busy"], 0);
    let hwm = server.vm("VmHWM:");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "load: {} RSS samples {:.1}..{:.1} MiB, peak {:.1} MiB, budget {:.1} MiB",
        samples.len(),
        mib(*samples.iter().min().unwrap_or(&0)),
        mib(*samples.iter().max().unwrap_or(&0)),
        mib(hwm),
        mib(budget)
    );
    assert!(hwm <= budget, "peak RSS {hwm} over the budget {budget}");
    // Flat: the second half of the run does not grow past the first half's peak (+ 8 MiB for
    // allocator noise).
    if samples.len() >= 4 {
        let half = samples.len() / 2;
        let first = *samples[..half].iter().max().unwrap();
        let second = *samples[half..].iter().max().unwrap();
        assert!(
            second <= first + (8 << 20),
            "RSS grew under steady load: {samples:?}"
        );
    }
    server.signal("TERM");
    let (ok, stderr) = server.wait(Duration::from_secs(20));
    assert!(ok, "{stderr}");
    let (requests, answered, unanswered) = stopped_counts(&stderr);
    assert_eq!((answered, unanswered), (requests, 0));
}

/// The service's load case with `serve`'s defaults (no flags) on the small model: 32, then 64
/// clients, each writing its 100 requests before reading (the queue's 64 slots fill at once;
/// readers wait for room instead of answering `busy`). Every id is answered once, in order,
/// without an error, and the peak RSS stays within the stated budget, which is at most 128 MiB
/// for 2 workers besides the allowance for a reload's second model (`tests/reload/` checks
/// that one).
#[test]
fn pipelining_clients_on_the_small_model_with_default_limits() {
    let dir = TempDir::new("pipelined");
    let small = fixtures().join("electra-small-zh/discriminator");
    // the default workers are the cores: fixed at this machine's CI size
    let server = Process::start_model(dir.path(), &small, &["--workers", "2"]);
    let stats = || Client::connect(&server.path).ask(r#"{"cmd":"stats"}"#)["stats"].clone();
    let budget = stats()["budget"]["total"].as_u64().unwrap();
    let serving = budget - stats()["budget"]["reload"].as_u64().unwrap();
    assert!(
        serving <= 128 << 20,
        "default budget {serving} over 128 MiB without the reload"
    );
    let mut sent = 0;
    for clients in [32, 64] {
        // every earlier connection has ended (64 clients are the default --max-connections)
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats()["connections"] != 1 {
            assert!(Instant::now() < deadline, "connections still open");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                let path = server.path.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(&path);
                    let texts = ["你好", "今天天气很好", "我爱北京天安门", "边缘设备上的推理"];
                    let mut lines = String::new();
                    for i in 0..100 {
                        let text = texts[(client + i) % 4];
                        lines += &format!("{{\"id\":\"{client}-{i}\",\"text\":\"{text}\"}}\n");
                    }
                    c.send(lines.as_bytes());
                    for i in 0..100 {
                        let a = c.recv().expect("an answer per request");
                        assert_eq!(a["id"], format!("{client}-{i}"), "{a}");
                        assert_eq!(code(&a), None, "{a}");
                        assert!(!a["tokens"].as_array().unwrap().is_empty(), "{a}");
                    }
                    c.writer.shutdown(std::net::Shutdown::Write).unwrap();
                    assert!(c.recv().is_none(), "no extra answers");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        sent += clients * 100;
        eprintln!(
            "pipelined: {clients} clients x 100 requests in {:.1?}",
            started.elapsed()
        );
    }
    let st = stats();
    assert_eq!(st["inferences"], sent as u64);
    let errors = st["errors"].as_object().unwrap();
    assert!(errors.values().all(|n| n == 0), "{st}");
    // every reservation is given back (by the writers, just after their last answers)
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats()["held_bytes"] != 0 {
        assert!(
            Instant::now() < deadline,
            "bytes still held after every answer"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let hwm = server.vm("VmHWM:");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "pipelined: peak RSS {:.1} MiB, budget {:.1} MiB",
        mib(hwm),
        mib(budget)
    );
    assert!(hwm <= budget, "peak RSS {hwm} over the budget {budget}");
    server.signal("TERM");
    let (ok, stderr) = server.wait(Duration::from_secs(20));
    assert!(ok, "{stderr}");
    let (requests, answered, unanswered) = stopped_counts(&stderr);
    assert_eq!((answered, unanswered), (requests, 0));
}

#[test]
fn sigterm_under_load_answers_every_accepted_request() {
    let dir = TempDir::new("term");
    let server = start_for_clients(dir.path(), &[]);
    let path = server.path.clone();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || load_client(&path, i, 100_000, true))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.signal("TERM");
    let (ok, stderr) = server.wait(Duration::from_secs(30));
    assert!(ok, "exit status not 0: {stderr}");
    assert!(!path.exists(), "socket file left behind");
    let received: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let (requests, answered, unanswered) = stopped_counts(&stderr);
    eprintln!("shutdown under load: {requests} requests read, {received} answers received");
    assert!(received > 0);
    assert_eq!(unanswered, 0, "{stderr}");
    assert_eq!(answered, requests, "{stderr}");
    // The server also answered the readiness ping of `Process::start`.
    assert_eq!(received as u64 + 1, answered, "{stderr}");
}
