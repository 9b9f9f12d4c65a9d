//! `electra-edge serve` reloading its model on SIGHUP (what `systemctl reload` sends), without
//! systemd: the binary on a socket in a temp folder, its model folder a symlink the test
//! switches, `NOTIFY_SOCKET` a datagram socket the test reads. Run with
//! `cargo test --release --test reload`. The helpers are in `harness.rs`.

#[path = "../common/mod.rs"]
mod common;
mod harness;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempDir;
use harness::*;
use serde_json::Value;

/// What the test and the pipelining clients share.
#[derive(Default)]
struct Progress {
    stop: AtomicBool,
    /// Set once the test has seen the reload's READY=1.
    reloaded: AtomicBool,
    /// Per client: answers read, and requests written after `reloaded` was set.
    answered: [AtomicUsize; 16],
    written_after: [AtomicUsize; 16],
}

/// Lines a client writes ahead of its answers: past the server's in-flight cap (4), so the
/// server always has the next line waiting, and not thousands in the socket's buffers.
const DEPTH: usize = 8;

/// One pipelining client: a sender thread writes requests, up to [`DEPTH`] ahead of the
/// answers, until `stop`; this thread reads every answer. Returns, per request in order, (which
/// model answered, whether the request was written after `reloaded` was set).
fn pipelining_client(
    path: PathBuf,
    client: usize,
    progress: Arc<Progress>,
    old: Arc<Vec<Value>>,
    new: Arc<Vec<Value>>,
) -> Vec<(u8, bool)> {
    let mut c = Client::connect(&path);
    let mut writer = c.writer.try_clone().unwrap();
    let p = progress.clone();
    let sender = std::thread::spawn(move || {
        let mut after = Vec::new();
        while !p.stop.load(Ordering::SeqCst) {
            let i = after.len();
            if i - p.answered[client].load(Ordering::SeqCst) >= DEPTH {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // read before the line is written: a line written after the flag was set cannot
            // have been read before the reload completed
            let written_after = p.reloaded.load(Ordering::SeqCst);
            after.push(written_after);
            let text = TEXTS[(client + i) % TEXTS.len()];
            let line = format!("{{\"id\":\"{client}-{i}\",\"text\":\"{text}\"}}\n");
            writer.write_all(line.as_bytes()).unwrap();
            if written_after {
                p.written_after[client].fetch_add(1, Ordering::SeqCst);
            }
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        after
    });
    let mut models = Vec::new();
    while let Some(a) = c.recv() {
        let i = models.len();
        assert_eq!(a["id"], format!("{client}-{i}"), "out of order: {a}");
        assert!(a.get("error").is_none(), "an error: {a}");
        models.push(which(a, (client + i) % TEXTS.len(), &old, &new));
        progress.answered[client].fetch_add(1, Ordering::SeqCst);
    }
    let after = sender.join().unwrap();
    assert_eq!(
        models.len(),
        after.len(),
        "client {client}: answers != requests"
    );
    models.into_iter().zip(after).collect()
}

/// Waits until every client's `count` is at least `n`.
fn wait_all(counts: &[AtomicUsize; 16], n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while counts.iter().any(|c| c.load(Ordering::SeqCst) < n) {
        assert!(Instant::now() < deadline, "not every client got {n} {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 16 clients pipelining continuously while the model folder (a symlink) is switched to another
/// model and SIGHUP is sent: every request is answered exactly once, in order, without an
/// error, by one model or the other; per connection the old model's answers come first; every
/// request written after the reload completed (READY=1) is answered by the new model. systemd
/// is told RELOADING=1 with MONOTONIC_USEC, then READY=1 with the new STATUS.
#[test]
fn sighup_swaps_the_model_under_16_pipelining_clients() {
    let dir = TempDir::new("reload-swap");
    let link = dir.path().join("model");
    switch(&link, &tiny());
    let (old, new) = (Arc::new(answers_of(&tiny())), Arc::new(answers_of(&demo())));
    for (o, n) in old.iter().zip(new.iter()) {
        assert_ne!(o, n, "the two models must answer differently");
    }
    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &["--workers", "2"]);
    let before = server.stats();
    assert_eq!(before["model_generation"], 0);

    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let (path, progress) = (server.path.clone(), progress.clone());
            let (old, new) = (old.clone(), new.clone());
            std::thread::spawn(move || pipelining_client(path, client, progress, old, new))
        })
        .collect();
    wait_all(&progress.answered, 2 * DEPTH, "answers before the reload");
    switch(&link, &demo());
    let signalled = monotonic_usec();
    server.signal(libc::SIGHUP);
    let seen = notify.wait_for(2, "READY=1 after the reload", |m| has_line(m, "READY=1"));
    progress.reloaded.store(true, Ordering::SeqCst);
    let ready_seen = monotonic_usec();
    wait_all(
        &progress.written_after,
        2 * DEPTH,
        "requests written after READY=1",
    );
    progress.stop.store(true, Ordering::SeqCst);
    let results: Vec<Vec<(u8, bool)>> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let (mut from_old, mut from_new, mut after) = (0, 0, 0);
    for (client, answers) in results.iter().enumerate() {
        let first_new = answers.iter().position(|&(m, _)| m == 1);
        if let Some(first_new) = first_new {
            assert!(
                answers[first_new..].iter().all(|&(m, _)| m == 1),
                "client {client}: the old model answered after the new one"
            );
        }
        for &(model, written_after) in answers {
            if written_after {
                assert_eq!(model, 1, "client {client}: old model after the reload");
                after += 1;
            }
            if model == 0 {
                from_old += 1;
            } else {
                from_new += 1;
            }
        }
    }
    eprintln!("answers: {from_old} by the old model, {from_new} by the new ({after} after READY)");
    assert!(
        from_old > 0 && after > 0,
        "the reload fell outside the load"
    );

    // RELOADING=1 with MONOTONIC_USEC (taken between the signal and READY=1), then READY=1.
    assert_eq!(seen.len(), 3, "{seen:?}");
    let reloading = &seen[1];
    assert!(has_line(reloading, "RELOADING=1"), "{seen:?}");
    let usec: u64 = field(reloading, "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(
        (signalled..=ready_seen).contains(&usec),
        "{usec} not in {signalled}..={ready_seen}"
    );
    assert!(field(reloading, "STATUS").is_some(), "{reloading}");
    let ready = &seen[2];
    let status = field(ready, "STATUS").expect("STATUS with READY=1");
    assert!(status.starts_with("serving "), "{status}");
    assert!(status.contains("models/demo/discriminator"), "{status}");

    let st = server.stats();
    assert_eq!(st["model_generation"], 1);
    assert_eq!(st["reloads"], 1);
    let canonical = demo().canonicalize().unwrap();
    assert_eq!(st["model_folder"], canonical.display().to_string());
    assert_eq!(st["model"], link.display().to_string());
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    assert_eq!(error_lines(&stderr), Vec::<&str>::new());
    let (requests, answered, unanswered) = stopped_counts(&stderr);
    assert_eq!((answered, unanswered), (requests, 0), "{stderr}");
}

/// A folder that cannot be loaded (a truncated model.onnx), then one whose self-check fails
/// (the manifest's golden outputs changed): each leaves the old model answering, logs exactly
/// one error line, and says why in STATUS= with READY=1. A good folder then loads.
#[test]
fn a_broken_folder_keeps_the_old_model_serving() {
    let dir = TempDir::new("reload-broken");
    let link = dir.path().join("model");
    switch(&link, &tiny());
    let old = answers_of(&tiny());
    let new = answers_of(&demo());

    let truncated = dir.path().join("truncated");
    copy_folder(&demo(), &truncated);
    let onnx = std::fs::read(truncated.join("model.onnx")).unwrap();
    std::fs::write(truncated.join("model.onnx"), &onnx[..onnx.len() / 2]).unwrap();

    let wrong = dir.path().join("wrong-goldens");
    copy_folder(&demo(), &wrong);
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(wrong.join("manifest.json")).unwrap()).unwrap();
    // both references moved by 1: the allowed error (twice int8's distance to fp32) stays
    // small, ours is 1 off
    for golden in manifest["golden"].as_array_mut().unwrap() {
        for key in ["ort_fp32", "ort_int8"] {
            for v in golden[key].as_array_mut().unwrap() {
                *v = Value::from(v.as_f64().unwrap() + 1.0);
            }
        }
    }
    std::fs::write(wrong.join("manifest.json"), manifest.to_string()).unwrap();

    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &[]);
    let mut c = Client::connect(&server.path);
    let mut readies = 1;
    for (broken, why) in [(&truncated, "model.onnx"), (&wrong, "self-check")] {
        switch(&link, broken);
        server.signal(libc::SIGHUP);
        // answered while the reload runs, and after it failed: the old model
        for (i, text) in TEXTS.iter().enumerate() {
            assert_eq!(which(c.ask_text(text), i, &old, &new), 0);
        }
        readies += 1;
        let seen = notify.wait_for(readies, "READY=1 after the reload", |m| {
            has_line(m, "READY=1")
        });
        let (reloading, ready) = (&seen[seen.len() - 2], &seen[seen.len() - 1]);
        assert!(has_line(reloading, "RELOADING=1"), "{seen:?}");
        let status = field(ready, "STATUS").expect("STATUS with READY=1");
        assert!(
            status.contains("failed") && status.contains(why),
            "{status}"
        );
        assert!(status.contains("still serving"), "{status}");
        for (i, text) in TEXTS.iter().enumerate() {
            assert_eq!(which(c.ask_text(text), i, &old, &new), 0);
        }
        let st = server.stats();
        assert_eq!(st["model_generation"], 0);
        assert!(
            st["last_reload_error"].as_str().unwrap().contains(why),
            "{st}"
        );
    }
    assert_eq!(server.stats()["reloads_failed"], 2);
    // The good folder now: the new model answers.
    switch(&link, &demo());
    server.signal(libc::SIGHUP);
    notify.wait_for(readies + 1, "READY=1 after the reload", |m| {
        has_line(m, "READY=1")
    });
    for (i, text) in TEXTS.iter().enumerate() {
        assert_eq!(which(c.ask_text(text), i, &old, &new), 1);
    }
    drop(c);
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(
        errors.len(),
        2,
        "one error line per failed reload: {errors:?}"
    );
    assert!(errors[0].contains("model.onnx"), "{}", errors[0]);
    assert!(errors[1].contains("self-check"), "{}", errors[1]);
}

/// SIGHUPs that come while a reload runs are coalesced into one more reload after it (two
/// never overlap: RELOADING=1 and READY=1 alternate); SIGTERM during a reload still shuts down
/// cleanly: STOPPING=1, no READY=1 after it, exit 0, every request read answered.
#[test]
fn sighups_during_a_small_model_reload_coalesce_and_sigterm_during_one_exits_cleanly() {
    let dir = TempDir::new("reload-coalesce");
    let link = dir.path().join("model");
    switch(&link, &small());
    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &[]);
    server.signal(libc::SIGHUP);
    notify.wait_for(1, "RELOADING=1", |m| has_line(m, "RELOADING=1"));
    for _ in 0..3 {
        server.signal(libc::SIGHUP);
    }
    let seen = notify.wait_for(3, "READY=1 after two reloads", |m| has_line(m, "READY=1"));
    // nothing more comes
    std::thread::sleep(Duration::from_millis(1500));
    let seen_later = notify.lifecycle();
    assert_eq!(seen_later, seen, "a third reload");
    let kinds: Vec<&str> = seen
        .iter()
        .map(|m| {
            if has_line(m, "RELOADING=1") {
                "RELOADING"
            } else if has_line(m, "READY=1") {
                "READY"
            } else {
                "other"
            }
        })
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(kinds, ["READY", "RELOADING", "READY", "RELOADING", "READY"]);
    assert_eq!(server.stats()["reloads"], 2);

    // SIGTERM while a reload loads, with a client asking throughout.
    let path = server.path.clone();
    let asking = Arc::new(AtomicBool::new(true));
    let client = {
        let asking = asking.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&path);
            let mut answers = HashMap::new();
            let mut n = 0;
            while asking.load(Ordering::SeqCst) {
                let line = format!("{{\"id\":{n},\"text\":\"你好\"}}\n");
                if c.writer.write_all(line.as_bytes()).is_err() {
                    break;
                }
                match c.recv() {
                    Some(a) => {
                        assert!(a.get("error").is_none(), "{a}");
                        answers.insert(n, a);
                    }
                    None => break,
                }
                n += 1;
            }
            answers.len()
        })
    };
    server.signal(libc::SIGHUP);
    notify.wait_for(3, "RELOADING=1", |m| has_line(m, "RELOADING=1"));
    server.signal(libc::SIGTERM);
    // the client keeps asking into the shutdown's drain, then goes quiet
    std::thread::sleep(Duration::from_millis(300));
    asking.store(false, Ordering::SeqCst);
    let (ok, stderr) = server.wait();
    let answered_to_client = client.join().unwrap();
    assert!(ok, "{stderr}");
    let seen = notify.lifecycle();
    let stopping = seen
        .iter()
        .position(|m| has_line(m, "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1: {seen:?}"));
    assert!(
        seen[stopping..].iter().all(|m| !has_line(m, "READY=1")),
        "READY=1 after STOPPING=1: {seen:?}"
    );
    let (requests, answered, unanswered) = stopped_counts(&stderr);
    assert_eq!((answered, unanswered), (requests, 0), "{stderr}");
    assert!(answered_to_client > 0);
    assert_eq!(error_lines(&stderr), Vec::<&str>::new());
}

/// The peak RSS of reloads of the small model under load stays within the budget the server
/// states (which counts a second model for the reload), and that budget, with one worker, is
/// within the `MemoryMax=192M` docs/serve.md asks of the unit.
#[test]
fn reloading_the_small_model_stays_within_the_budget() {
    let dir = TempDir::new("reload-memory");
    let link = dir.path().join("model");
    switch(&link, &small());
    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &["--workers", "1"]);
    let budget = server.stats()["budget"].clone();
    let total = budget["total"].as_u64().unwrap();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let hwm_before = server.vm("VmHWM");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (path, stop) = (server.path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&path);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let a = c.ask_text(TEXTS[(client + n) % TEXTS.len()]);
                    assert!(a.get("error").is_none(), "{a}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    for reload in 0..3 {
        server.signal(libc::SIGHUP);
        notify.wait_for(reload + 2, "READY=1", |m| has_line(m, "READY=1"));
    }
    stop.store(true, Ordering::SeqCst);
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let hwm = server.vm("VmHWM");
    let after = server.stats();
    eprintln!(
        "reload memory: peak RSS {:.1} MiB before the reloads, {:.1} MiB after 3 ({answered} \
         requests meanwhile); budget {:.1} MiB at start (base {:.1}, reload {:.1}), {:.1} MiB \
         after",
        mib(hwm_before),
        mib(hwm),
        mib(total),
        mib(budget["base"].as_u64().unwrap()),
        mib(budget["reload"].as_u64().unwrap()),
        mib(after["budget"]["total"].as_u64().unwrap()),
    );
    assert_eq!(after["reloads"], 3);
    assert!(hwm <= total, "peak RSS {hwm} over the budget {total}");
    assert!(
        total <= 192 << 20,
        "one worker's budget {total} over MemoryMax=192M"
    );
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}
