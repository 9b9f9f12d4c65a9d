//! Per-connection limits and backpressure, in-process: a client that never reads is dropped
//! while others are served; connections over the cap get `busy`; a full queue holds readers
//! back (`busy` only after the queue timeout); idle connections are closed.

use std::io::{BufRead, ErrorKind, Write};
use std::time::{Duration, Instant};

use crate::harness::{code, Running};
use serde_json::Value;

#[test]
fn a_client_that_never_reads_is_dropped_and_others_are_served() {
    let server = Running::start("slow", |c| {
        c.write_timeout = Duration::from_millis(500);
        c.max_in_flight = 4;
    });
    let mut slow = server.client();
    let mut slow_writer = slow.writer.try_clone().unwrap();
    slow_writer
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Big answers (raw logits, per-token scores) that no one reads.
    let sender = std::thread::spawn(move || {
        let line = format!(
            "{{\"id\":0,\"text\":\"{}\",\"raw\":true}}\n",
            "读".repeat(1_000)
        );
        let mut sent = 0usize;
        for _ in 0..2_000 {
            if slow_writer.write_all(line.as_bytes()).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let started = Instant::now();
    let mut other = server.client();
    let mut asked = 0u64;
    loop {
        // Meanwhile the server answers others.
        assert_eq!(other.ask(r#"{"id":"o","text":"你好"}"#)["id"], "o");
        asked += 2; // this and the stats request
        if server.stats()["dropped_slow_clients"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = sender.join().unwrap();
    // The server stopped reading at the in-flight cap: far fewer than 2,000 lines went in.
    assert!(sent < 2_000, "sent {sent}");
    let s = server.stats();
    let from_slow = s["requests"].as_u64().unwrap() - asked - 1;
    // In flight (4) plus the answers the kernel's socket buffer took (~2 of ~90 KB each).
    assert!(
        from_slow <= 10,
        "the server read {from_slow} lines from a client that does not read (cap 4): {s}"
    );
    // What the slow client gets: whole answers, then the end of the stream; the answer being
    // written when the write timed out may be cut short (no newline).
    slow.writer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        let mut line = Vec::new();
        match slow.reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.ends_with(b"\n") => {
                let a: Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(a["id"], 0);
            }
            Ok(_) => break, // the cut answer, then EOF
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e}"),
        }
    }
    drop(slow);
    drop(other);
    let report = server.stop();
    assert_eq!(report.dropped_slow_clients, 1);
    assert!(report.unanswered > 0);
    assert_eq!(report.requests, report.answered + report.unanswered);
}

#[test]
fn connections_over_the_cap_get_busy_then_close() {
    let server = Running::start("conncap", |c| c.max_connections = 2);
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(a.ask(r#"{"cmd":"ping"}"#)["pong"], true);
    assert_eq!(b.ask(r#"{"cmd":"ping"}"#)["pong"], true);
    let mut c = server.client();
    let busy = c.recv().unwrap();
    assert_eq!(code(&busy), Some("busy"), "{busy}");
    assert!(c.recv().is_none(), "closed after the busy line");
    drop(a);
    // The freed slot is reusable (the count drops when both connection threads end).
    let started = Instant::now();
    loop {
        let mut d = server.client();
        // While the slot is still taken the server answers `busy` and closes, possibly before
        // this write lands (a broken pipe, seen under qemu): then read what it sent, or retry.
        let _ = d.writer.write_all(b"{\"cmd\":\"ping\"}\n");
        if d.recv().is_some_and(|answer| answer.get("pong").is_some()) {
            break;
        }
        // Generous: on a loaded CI host the old connection's threads may end late.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slot never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.ask(r#"{"cmd":"ping"}"#)["pong"], true);
}

/// A full queue is backpressure, not rejection: the reader waits for a slot and every line is
/// answered in order. Only a request that waited longer than `queue_timeout` gets `busy`.
#[test]
fn a_full_queue_holds_readers_back_and_busy_is_only_for_the_queue_timeout() {
    let text = "满".repeat(2_000);
    let ask_30 = |server: &Running| {
        let mut c = server.client();
        for i in 0..30 {
            c.send(format!("{{\"id\":{i},\"text\":\"{text}\"}}\n").as_bytes());
        }
        let mut busy = 0;
        for i in 0..30 {
            let a = c.recv().unwrap();
            assert_eq!(a["id"], i, "order kept");
            match code(&a) {
                Some("busy") => busy += 1,
                None => assert!(a["tokens"].is_array()),
                other => panic!("unexpected {other:?}"),
            }
        }
        busy
    };
    let server = Running::start("queue", |c| {
        c.max_queue = 1;
        c.max_in_flight = 64;
    });
    assert_eq!(ask_30(&server), 0, "a full queue made a request busy");
    // A queue timeout shorter than one inference: the waiting requests give up.
    let impatient = Running::start("queue-timeout", |c| {
        c.max_queue = 1;
        c.max_in_flight = 64;
        c.queue_timeout = Duration::from_millis(1);
    });
    let busy = ask_30(&impatient);
    assert!(busy > 0 && busy < 30, "busy {busy}");
}

#[test]
fn idle_connections_are_closed() {
    let server = Running::start("idle", |c| c.idle_timeout = Duration::from_millis(300));
    let mut c = server.client();
    assert_eq!(c.ask(r#"{"cmd":"ping"}"#)["pong"], true);
    let started = Instant::now();
    assert!(c.recv().is_none());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    assert_eq!(server.stats()["idle_closed"], 1);
}
