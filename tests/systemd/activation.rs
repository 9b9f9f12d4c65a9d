//! Socket activation: this test binary re-runs itself as a child (`socket_activation_child`)
//! with a listening socket at fd 3 and `LISTEN_FDS`/`LISTEN_PID` set, once through `python3`
//! and once through systemd's own `systemd-socket-activate`; and `LISTEN_*` meant for another
//! process ignored.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{runner, TempDir};
use crate::harness::{env_lock, need};
use electra_edge::systemd;

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
    // libtest names a test by its path below the crate root (this file is `mod activation`).
    args.extend(
        [
            "--exact",
            "activation::socket_activation_child",
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
