//! Shutdown and drain, in-process: a listener that cannot accept any more ends `serve` with an
//! error; a connection accepted before the shutdown is still answered; a client that keeps
//! sending does not hold the shutdown up past the drain limit.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::TempDir;
use crate::harness::{code, engine, Client, Running};
use electra_edge::server::{self, ServerConfig, Shutdown};

/// A listener that stops accepting underneath the server (here: shut down through a second
/// handle, as another process holding the socket could) is a fatal error: `serve` stops and
/// returns an error, so the process exits non-zero and systemd restarts it, instead of logging
/// `accept failed` forever while looking healthy.
#[test]
fn a_listener_that_cannot_accept_any_more_ends_serve_with_an_error() {
    let dir = TempDir::new("dead-listener");
    let path = dir.path().join("s.sock");
    let engine = engine();
    let mut config = ServerConfig::for_engine(&engine);
    config.poll_interval = Duration::from_millis(20);
    let listener = UnixListener::bind(&path).unwrap();
    let other_holder = listener.try_clone().unwrap();
    let shutdown = Shutdown::new();
    let handle = {
        let s = shutdown.clone();
        std::thread::spawn(move || {
            server::serve(engine, listener, config, s, server::Reload::new())
        })
    };
    let mut c = Client::connect(&path);
    assert_eq!(c.ask(r#"{"id":1,"cmd":"ping"}"#)["pong"], true);
    // shutdown(2) on the listening socket, through the other handle.
    let _ = UnixStream::from(std::os::fd::OwnedFd::from(other_holder))
        .shutdown(std::net::Shutdown::Both);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "serve kept running on a dead listener"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = handle.join().unwrap().expect_err("serve must fail");
    assert!(
        format!("{err:#}").contains("listening socket"),
        "error names the socket: {err:#}"
    );
    // The connection that was open got its answers; nothing hangs.
    drop(c);
    drop(shutdown);
}

#[test]
fn a_connection_accepted_before_shutdown_is_answered_when_its_line_comes_after() {
    // The race of `systemctl restart` during a client loop: the old instance accepted the
    // connection, then got SIGTERM before the client's line arrived.
    let server = Running::start("drain", |c| c.drain_quiet = Duration::from_millis(800));
    let mut late = server.client();
    let mut idle = server.client();
    // Answered over a third connection, so the two above (earlier in the backlog) are accepted.
    assert_eq!(server.stats()["connections_total"], 3);
    // Quiet for longer than drain_quiet before the signal: the quiet time counts from the
    // signal, not from the connection's last byte.
    std::thread::sleep(Duration::from_millis(1000));
    server.shutdown.trigger();
    std::thread::sleep(Duration::from_millis(300));
    let a = late.ask(r#"{"id":"late","text":"我爱北京"}"#);
    assert_eq!(a["id"], "late", "{a}");
    assert_eq!(code(&a), None, "{a}");
    assert!(a["tokens"].is_array(), "{a}");
    // Quiet connections are closed, and serve returns.
    assert!(late.recv().is_none());
    assert!(idle.recv().is_none());
    let report = server.stop();
    // the stats request and the late one
    assert_eq!(
        (report.requests, report.answered, report.unanswered),
        (2, 2, 0)
    );
}

#[test]
fn a_client_that_keeps_sending_does_not_hold_up_shutdown() {
    let server = Running::start("drain-limit", |c| {
        c.drain_quiet = Duration::from_millis(300);
        c.drain_limit = Duration::from_millis(600);
    });
    let mut c = server.client();
    assert_eq!(c.ask(r#"{"cmd":"ping"}"#)["pong"], true);
    let mut writer = c.writer.try_clone().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // A request every 50 ms: never quiet for drain_quiet.
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if writer.write_all(b"{\"cmd\":\"ping\"}\n").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    server.shutdown.trigger();
    let triggered = Instant::now();
    let mut late_answers = 0;
    while let Some(a) = c.recv() {
        assert_eq!(a["pong"], true, "{a}");
        if triggered.elapsed() >= Duration::from_millis(200) {
            late_answers += 1;
        }
    }
    // Pings sent during the drain were answered (~8 of them) until the limit closed the stream.
    assert!(
        late_answers >= 2,
        "{late_answers} answers 200 ms or more after the shutdown"
    );
    let report = server.stop();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = sender.join();
    assert_eq!(report.answered, report.requests, "{report:?}");
    assert_eq!(report.unanswered, 0, "{report:?}");
}
