//! `sd_notify` and the watchdog: a `UnixDatagram` bound in a temp dir (and an abstract one)
//! stands in for systemd's notification socket, `NOTIFY_SOCKET` points at it.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::common::TempDir;
use crate::harness::env_lock;
use electra_edge::systemd;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("notification datagram");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

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
