//! End to end: the real binary serving under stand-ins for systemd. Started by
//! `systemd-socket-activate` with `NOTIFY_SOCKET` and `WATCHDOG_USEC` (READY=1, answers,
//! watchdog pings, STOPPING=1 on SIGTERM); and restarted on the same inherited listening
//! socket by a python3 launcher, as `systemctl restart` does.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{fixtures, runner, TempDir};
use crate::harness::need;

/// The real binary, socket-activated by `systemd-socket-activate`, with `NOTIFY_SOCKET` and
/// `WATCHDOG_USEC` pointing at our datagram socket, as systemd would run the service unit:
/// READY=1 after the load, answers on the passed socket, WATCHDOG=1 pings, STOPPING=1 and
/// exit 0 on SIGTERM, and the socket file (systemd's) left in place.
#[test]
fn serve_under_a_stand_in_for_systemd() {
    need("systemd-socket-activate");
    let model = fixtures().join("electra-tiny-zh/discriminator");
    assert!(
        model.join("config.json").is_file(),
        "fixture model at {}",
        model.display()
    );
    let dir = TempDir::new("sd-e2e");
    let sock = dir.join("electra-edge.sock");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("--listen").arg(&sock);
    for (k, v) in [
        ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
        ("RUST_LOG", "info"),
    ] {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    cmd.args(runner()).arg(env!("CARGO_BIN_EXE_electra-edge"));
    cmd.arg("serve").arg("--model").arg(&model);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    // systemd-socket-activate starts the service on the first connection (as systemd does for
    // a socket unit whose service is not running yet); it waits in the backlog meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) => {
                assert!(child.try_wait().unwrap().is_none(), "launcher exited");
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();

    // Everything until READY=1 (STATUS= lines while loading).
    let mut seen = Vec::new();
    loop {
        let msg = next_notification(&notify, &mut child);
        seen.push(msg.clone());
        if msg.lines().any(|l| l == "READY=1") {
            break;
        }
        assert!(seen.len() < 1000, "no READY=1: {seen:?}");
    }
    assert!(
        seen.iter().any(|m| m.starts_with("STATUS=")),
        "STATUS before READY: {seen:?}"
    );
    // Readiness and the serving status travel in one datagram: a watchdog ping from the timer
    // thread cannot slip between them (it once did, and the STATUS line then arrived late).
    let ready = seen.last().unwrap();
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=serving ")),
        "READY=1 without the serving status: {ready:?}"
    );

    // The request, on the socket passed in.
    (&stream)
        .write_all("{\"id\":1,\"text\":\"我爱北京天安门\"}\n".as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["id"], 1, "{line}");
    assert!(reply.get("error").is_none(), "{line}");
    drop(stream);

    // Watchdog pings while idle (interval 1 s: a ping every 0.5 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let msg = next_notification(&notify, &mut child);
        if msg == "WATCHDOG=1" {
            break;
        }
        assert!(Instant::now() < deadline, "no WATCHDOG=1");
    }

    // SIGTERM: STOPPING=1, exit 0, socket file left for systemd.
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    loop {
        let msg = next_notification(&notify, &mut child);
        if msg.lines().any(|l| l == "STOPPING=1") {
            break;
        }
        assert_eq!(msg, "WATCHDOG=1", "unexpected notification");
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert!(
        sock.exists(),
        "a socket-activated server leaves the socket file to systemd"
    );
}

/// `systemctl restart` / `stop` as systemd does them, without systemd: a launcher (python3)
/// owns the listening socket and starts `electra-edge serve` on it twice, the socket-activation
/// way (fd 3, `LISTEN_FDS`, `LISTEN_PID`). The first instance answers, gets SIGTERM and exits 0;
/// the second instance, given the same fd, must answer too. The socket file is renamed after
/// binding, so the server cannot connect to itself by name (under the service unit that
/// connect is refused: the socket is root's 0660, the service a DynamicUser): a server that
/// then shut the inherited listener down to wake its own `accept` broke it for every later
/// instance (the restart outage).
#[test]
fn restart_hands_the_listening_socket_to_the_next_instance() {
    need("python3");
    let model = fixtures().join("electra-tiny-zh/discriminator");
    let dir = TempDir::new("sd-restart");
    let bound = dir.join("bound.sock");
    let path = dir.join("svc.sock");
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(16)
os.rename(sys.argv[1], sys.argv[2])
for instance in range(2):
    pid = os.fork()
    if pid == 0:
        if s.fileno() != 3:
            os.dup2(s.fileno(), 3)
        os.set_inheritable(3, True)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        os.execvp(sys.argv[3], sys.argv[3:])
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("exit", os.waitstatus_to_exitcode(status), flush=True)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(&bound).arg(&path);
    cmd.args(runner()).arg(env!("CARGO_BIN_EXE_electra-edge"));
    cmd.arg("serve").arg("--model").arg(&model);
    let mut launcher = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
    let mut next = |what: &str| -> String {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("launcher ended before '{what}'"))
            .unwrap();
        let rest = line
            .strip_prefix(what)
            .unwrap_or_else(|| panic!("expected '{what} ...', got {line:?}"));
        rest.trim().to_string()
    };
    for instance in 1..=2 {
        let pid = next("pid");
        // Connections wait in the backlog while the instance loads.
        let stream = UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("instance {instance}: cannot connect: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        (&stream)
            .write_all(format!("{{\"id\":{instance},\"text\":\"我爱北京天安门\"}}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("instance {instance}: not JSON ({e}): {line:?}"));
        assert_eq!(reply["id"], instance, "instance {instance}: {line}");
        assert!(reply["tokens"].is_array(), "instance {instance}: {line}");
        drop(stream);
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        assert_eq!(next("exit"), "0", "instance {instance} exits 0 on SIGTERM");
    }
    let out = launcher.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "launcher: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The next sd_notify datagram, failing fast if the service exits first (5 min at most: a
/// debug build under qemu loads slowly).
fn next_notification(notify: &UnixDatagram, child: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buf = [0u8; 4096];
    loop {
        match notify.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!("service exited ({status}) before the next notification: {err}");
                }
                assert!(Instant::now() < deadline, "no notification in time");
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}
