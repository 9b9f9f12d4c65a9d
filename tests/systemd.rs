//! systemd integration without systemd: real sockets, real environment variables, real child
//! processes; no mocks.
//!
//! - sd_notify: a `UnixDatagram` bound in a temp dir (and an abstract one) stands in for
//!   systemd's notification socket; `NOTIFY_SOCKET` points at it.
//! - Socket activation: this test binary re-runs itself as a child with a listening socket at
//!   fd 3 and `LISTEN_FDS`/`LISTEN_PID` set, once through `python3` (bind, listen, `dup2` to 3,
//!   `exec`) and once through systemd's own `systemd-socket-activate` tool when installed.
//!   Under qemu-user (no binfmt), set `ELECTRA_EDGE_TEST_RUNNER="qemu-aarch64 -L ..."` so the
//!   child is started through it (`.ci/aarch64.sh` does).
//! - `cross/install.sh` into a temp prefix, and `cross/verify-units.sh`.
//!
//! Tests that change the environment hold `ENV_LOCK` (tests run in parallel threads).

mod common;

use common::{fixtures, repo_root, runner, TempDir};
use electra_edge::systemd;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENV_LOCK: Mutex<()> = Mutex::new(());

fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("notification datagram");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Fails the test when `cmd` is not installed (`.ci/run` installs every tool these tests use).
fn need(cmd: &str) {
    assert!(
        have(cmd),
        "{cmd} is not installed: this test needs it (.ci/run installs it: apt-get install {})",
        match cmd {
            "python3" => "python3",
            "socat" => "socat",
            _ => "systemd",
        }
    );
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ------------------------------------------------------------------------------------------
// sd_notify
// ------------------------------------------------------------------------------------------

#[test]
fn notify_messages_reach_a_path_socket() {
    let _g = env_lock();
    let dir = TempDir::new("sd-notify");
    let path = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    std::env::set_var("NOTIFY_SOCKET", &path);
    assert!(systemd::status("loading model").unwrap());
    assert!(systemd::ready().unwrap());
    assert!(systemd::status("serving\n2 workers").unwrap());
    assert!(systemd::watchdog_ping().unwrap());
    assert!(systemd::extend_timeout(Duration::from_secs(5)).unwrap());
    assert!(systemd::stopping().unwrap());
    assert!(systemd::notify("STATUS=a\nERRNO=0").unwrap());
    assert!(systemd::ready_with_status("serving\nnow").unwrap());
    std::env::remove_var("NOTIFY_SOCKET");

    assert_eq!(recv(&rx), "STATUS=loading model");
    assert_eq!(recv(&rx), "READY=1");
    assert_eq!(recv(&rx), "STATUS=serving 2 workers");
    assert_eq!(recv(&rx), "WATCHDOG=1");
    assert_eq!(recv(&rx), "EXTEND_TIMEOUT_USEC=5000000");
    assert_eq!(recv(&rx), "STOPPING=1");
    assert_eq!(recv(&rx), "STATUS=a\nERRNO=0");
    assert_eq!(recv(&rx), "READY=1\nSTATUS=serving now");
}

#[test]
fn notify_messages_reach_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let _g = env_lock();
    let name = format!("electra-edge-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
    let sent = systemd::ready();
    std::env::remove_var("NOTIFY_SOCKET");
    assert!(sent.unwrap());
    assert_eq!(recv(&rx), "READY=1");
}

#[test]
fn notify_without_systemd_is_a_noop() {
    let _g = env_lock();
    std::env::remove_var("NOTIFY_SOCKET");
    assert!(!systemd::ready().unwrap());
    assert!(!systemd::status("x").unwrap());
    assert!(!systemd::stopping().unwrap());
    assert!(!systemd::watchdog_ping().unwrap());
    std::env::set_var("NOTIFY_SOCKET", "");
    assert!(!systemd::ready().unwrap());
    std::env::remove_var("NOTIFY_SOCKET");
    std::env::remove_var("WATCHDOG_USEC");
    assert_eq!(systemd::watchdog_interval(), None);
    assert!(!systemd::Watchdog::from_env().is_enabled());
}

#[test]
fn notify_to_a_missing_socket_is_an_error() {
    let _g = env_lock();
    let dir = TempDir::new("sd-missing");
    std::env::set_var("NOTIFY_SOCKET", dir.join("nobody-listens.sock"));
    let r = systemd::ready();
    std::env::remove_var("NOTIFY_SOCKET");
    assert!(r.is_err());
}

// ------------------------------------------------------------------------------------------
// Watchdog
// ------------------------------------------------------------------------------------------

#[test]
fn watchdog_from_env_pings_the_notify_socket() {
    let _g = env_lock();
    let dir = TempDir::new("sd-wdenv");
    let path = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    std::env::set_var("NOTIFY_SOCKET", &path);
    // Meant for another process: no watchdog.
    std::env::set_var("WATCHDOG_USEC", "2000000");
    std::env::set_var("WATCHDOG_PID", "1");
    assert_eq!(systemd::watchdog_interval(), None);
    assert!(!systemd::Watchdog::from_env().is_enabled());
    // Meant for us: 2 s interval, pings every second. (A shorter interval makes the test flaky
    // on a loaded host: a busy test thread descheduled past the stall limit rightly stops the
    // pings.)
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(systemd::watchdog_interval(), Some(Duration::from_secs(2)));
    let wd = systemd::Watchdog::from_env();
    std::env::remove_var("WATCHDOG_PID");
    assert_eq!(
        systemd::watchdog_interval(),
        Some(Duration::from_secs(2)),
        "WATCHDOG_PID optional"
    );
    for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC"] {
        std::env::remove_var(k);
    }
    assert!(wd.is_enabled());
    {
        let _busy = wd.busy();
        wd.ping();
        assert_eq!(recv(&rx), "WATCHDOG=1");
    }
    assert_eq!(recv(&rx), "WATCHDOG=1");
    assert!(wd.pings_sent() >= 1); // the 2nd send may not be counted yet
    drop(wd); // the timer thread exits on its own
}

// ------------------------------------------------------------------------------------------
// Socket activation
// ------------------------------------------------------------------------------------------

/// Not a test on its own: the body of the child process started by the activation tests.
/// It does nothing unless `EE_SD_CHILD` is set.
#[test]
fn socket_activation_child() {
    let Ok(mode) = std::env::var("EE_SD_CHILD") else {
        return;
    };
    let expect_name = std::env::var("EE_SD_CHILD_NAME").ok();
    assert!(
        std::env::var("LISTEN_FDS").is_ok(),
        "launcher set LISTEN_FDS"
    );
    let listener = match mode.as_str() {
        "listener" => systemd::listener_from_env()
            .unwrap()
            .expect("a passed socket"),
        "names" => {
            let mut fds = systemd::listen_fds_with_names().unwrap();
            assert_eq!(fds.len(), 1);
            let (fd, name) = fds.pop().unwrap();
            if let Some(expect) = expect_name {
                assert_eq!(name, expect);
            }
            systemd::check_unix_stream_listener(fd).unwrap()
        }
        other => panic!("unknown EE_SD_CHILD mode {other}"),
    };
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        assert!(
            std::env::var_os(k).is_none(),
            "{k} removed from the environment"
        );
    }
    // Close-on-exec is set on what we hold now.
    use std::os::fd::AsRawFd;
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", listener.as_raw_fd())).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    assert_ne!(
        u32::from_str_radix(flags, 8).unwrap() & 0o2000000,
        0,
        "O_CLOEXEC set"
    );
    // Serve one line.
    let (stream, _) = listener.accept().unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    (&stream)
        .write_all(format!("ok {} {}", mode, line).as_bytes())
        .unwrap();
}

/// Connect to `path` (retrying while the child starts), send one line, return the reply and
/// wait for the child to exit successfully.
fn talk_to_child(mut child: std::process::Child, path: &Path, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) => {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!("child exited early ({status}): {err}");
                }
                assert!(
                    Instant::now() < deadline,
                    "could not connect to {}: {e}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (&stream).write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    (&stream).read_to_string(&mut reply).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("1 passed"), "the child test ran: {stdout}");
    reply
}

fn child_args() -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut args = runner();
    args.push(exe.to_string_lossy().into_owned());
    args.extend(
        [
            "--exact",
            "socket_activation_child",
            "--nocapture",
            "--test-threads=1",
        ]
        .map(String::from),
    );
    args
}

/// python3 plays systemd: bind + listen, `dup2` onto fd 3, set `LISTEN_PID` to its own pid
/// (kept across `exec`), `LISTEN_FDS=1`, then `exec` this test binary.
#[test]
fn socket_activation_via_exec_with_fd_3() {
    need("python3");
    let dir = TempDir::new("sd-act-py");
    let path = dir.join("svc.sock");
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)  # dup2(3, 3) would leave close-on-exec set
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.environ.pop("LISTEN_FDNAMES", None)
os.execvp(sys.argv[2], sys.argv[2:])
"#;
    let child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .args(child_args())
        .env("EE_SD_CHILD", "listener")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reply = talk_to_child(child, &path, "hello\n");
    assert_eq!(reply, "ok listener hello\n");
}

/// systemd's own launcher, `systemd-socket-activate` (no systemd instance needed).
#[test]
fn socket_activation_via_systemd_socket_activate() {
    need("systemd-socket-activate");
    let dir = TempDir::new("sd-act-sd");
    let path = dir.join("svc.sock");
    let child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&path)
        .args([
            "--fdname=api",
            "-E",
            "EE_SD_CHILD=names",
            "-E",
            "EE_SD_CHILD_NAME=api",
        ])
        .args(child_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reply = talk_to_child(child, &path, "你好\n");
    assert_eq!(reply, "ok names 你好\n");
}

#[test]
fn listen_env_for_another_pid_is_ignored_and_removed() {
    let _g = env_lock();
    std::env::set_var("LISTEN_PID", "1");
    std::env::set_var("LISTEN_FDS", "1");
    std::env::set_var("LISTEN_FDNAMES", "x");
    assert!(systemd::listener_from_env().unwrap().is_none());
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        assert!(std::env::var_os(k).is_none(), "{k} removed");
    }
    // Nothing set: nothing passed.
    assert!(systemd::listen_fds().unwrap().is_empty());
    assert!(systemd::listener_from_env().unwrap().is_none());
}

// ------------------------------------------------------------------------------------------
// cross/install.sh and cross/verify-units.sh
// ------------------------------------------------------------------------------------------

fn install(args: &[&str], destdir: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("cross/install.sh")).args(args);
    cmd.env_remove("DESTDIR");
    if let Some(d) = destdir {
        cmd.env("DESTDIR", d);
    }
    cmd.output().unwrap()
}

#[test]
fn install_sh_into_a_temp_prefix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("sd-install");
    let bin = dir.join("electra-edge-dummy");
    std::fs::write(&bin, "#!/bin/sh\necho dummy\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o700)).unwrap();
    let model = dir.join("model-src");
    std::fs::create_dir_all(model.join("golden")).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    std::fs::write(model.join("golden/out.json"), "[]").unwrap();
    std::fs::set_permissions(
        model.join("config.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let prefix = dir.join("prefix");
    let out = install(
        &[
            "--binary",
            bin.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let installed_bin = prefix.join("usr/local/bin/electra-edge");
    assert_eq!(
        std::fs::read(&installed_bin).unwrap(),
        std::fs::read(&bin).unwrap()
    );
    assert_eq!(mode(&installed_bin), 0o755);
    let model_dir = prefix.join("usr/local/share/electra-edge/model");
    assert_eq!(
        std::fs::read_to_string(model_dir.join("golden/out.json")).unwrap(),
        "[]"
    );
    assert_eq!(
        mode(&model_dir.join("config.json")),
        0o644,
        "model readable by the dynamic user"
    );
    assert_eq!(mode(&model_dir.join("golden")), 0o755);

    let units = prefix.join("etc/systemd/system");
    let service = std::fs::read_to_string(units.join("electra-edge.service")).unwrap();
    let socket = std::fs::read_to_string(units.join("electra-edge.socket")).unwrap();
    let p = prefix.to_str().unwrap();
    let exec_start = service
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec_start.starts_with(&format!(
            "ExecStart={p}/usr/local/bin/electra-edge serve --model {p}/usr/local/share/electra-edge/model"
        )),
        "{exec_start}"
    );
    assert!(service.contains(&format!(
        "\nReadOnlyPaths={p}/usr/local/share/electra-edge/model\n"
    )));
    assert!(
        !service.contains("=/usr/local/"),
        "every /usr/local path rewritten"
    );
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "MemoryMax=",
        "Environment=RUST_LOG=info",
    ] {
        assert!(
            service.lines().any(|l| l.starts_with(line)),
            "service has {line}"
        );
    }
    assert!(socket.contains("\nListenStream=/run/electra-edge/electra-edge.sock\n"));
    assert!(socket.contains("\nSocketMode=0660\n"));
    assert_eq!(
        socket,
        std::fs::read_to_string(repo_root().join("cross/electra-edge.socket")).unwrap()
    );

    // Installing again (an upgrade) works and is idempotent.
    let again = install(&["--binary", bin.to_str().unwrap(), p], None);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(units.join("electra-edge.service")).unwrap(),
        service
    );

    // DESTDIR staging: files under DESTDIR, unit paths as at run time (/usr/local/...).
    let stage = dir.join("stage");
    let out = install(&["--binary", bin.to_str().unwrap(), "/"], Some(&stage));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stage.join("usr/local/bin/electra-edge").is_file());
    let staged =
        std::fs::read_to_string(stage.join("etc/systemd/system/electra-edge.service")).unwrap();
    assert_eq!(
        staged,
        std::fs::read_to_string(repo_root().join("cross/electra-edge.service")).unwrap()
    );

    // Errors are clear and leave nothing half-done.
    let out = install(
        &[
            "--binary",
            dir.join("nope").to_str().unwrap(),
            dir.join("p2").to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no binary at"));
    assert!(!dir.join("p2").exists());
    let out = install(
        &[
            "--binary",
            bin.to_str().unwrap(),
            dir.join("with space").to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
}

#[test]
fn verify_units_sh_passes() {
    need("systemd-analyze");
    let out = Command::new("bash")
        .arg(repo_root().join("cross/verify-units.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------------------
// End to end: `electra-edge serve` under a stand-in for systemd
// ------------------------------------------------------------------------------------------

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
/// instance (issue: the restart outage).
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

/// MemoryMax= in the shipped service is at least the memory budget the server states for the
/// ExecStart limits, with the small model. Release builds only (a debug build's measured base
/// is larger and its warm-up takes minutes), and skipped under emulation (qemu-user's own
/// memory would count in the measured base).
#[test]
#[cfg_attr(debug_assertions, ignore = "release builds only: run with --release")]
fn service_memory_max_covers_the_budget() {
    assert!(
        std::env::var_os("ELECTRA_EDGE_TEST_RUNNER").is_none(),
        "not meaningful under emulation (qemu-user's own memory counts in the measured base): \
         skip it with --skip service_memory_max (.ci/aarch64.sh's callers do)"
    );
    let model = fixtures().join("electra-small-zh/discriminator");
    let out = Command::new("bash")
        .arg(repo_root().join("cross/verify-units.sh"))
        .arg("--budget")
        .arg(env!("CARGO_BIN_EXE_electra-edge"))
        .arg(&model)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("memory budget"), "{stdout}");
}
