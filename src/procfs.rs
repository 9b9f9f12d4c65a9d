//! Memory figures of a process from Linux's `/proc/PID/status` (all in bytes; 0 where `/proc`
//! is not readable or a field is missing), for load logs, the server's budget and stats,
//! benchmarks and tests.

/// Which process to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pid {
    /// This process.
    Me,
    /// Another process (a child a test or benchmark started).
    Other(u32),
}

/// The fields `names` (e.g. `"VmRSS"`, `"RssAnon"`) of a process's status, in bytes.
pub fn status_bytes(pid: Pid, names: &[&str]) -> Vec<u64> {
    let path = match pid {
        Pid::Me => "/proc/self/status".to_string(),
        Pid::Other(pid) => format!("/proc/{pid}/status"),
    };
    let status = std::fs::read_to_string(path).unwrap_or_default();
    names.iter().map(|n| field_bytes(&status, n)).collect()
}

/// One `Name:   123 kB` field of a status text, in bytes.
pub fn field_bytes(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `VmRSS` and `VmHWM` of this process.
pub fn rss() -> (u64, u64) {
    match status_bytes(Pid::Me, &["VmRSS", "VmHWM"])[..] {
        [rss, hwm] => (rss, hwm),
        _ => (0, 0),
    }
}

/// `RssAnon`, `RssFile` and `VmHWM` of this process as one line, for debug logs.
pub fn memory_line() -> String {
    let names = ["RssAnon", "RssFile", "VmHWM"];
    names
        .iter()
        .zip(status_bytes(Pid::Me, &names))
        .map(|(n, b)| format!("{n} {:.1} MB", b as f64 / (1024.0 * 1024.0)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_bytes() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n";
        assert_eq!(field_bytes(status, "VmRSS"), 1024 * 1024);
        assert_eq!(field_bytes(status, "VmHWM"), 2 * 1024 * 1024);
        assert_eq!(field_bytes(status, "RssAnon"), 0);
        // this process: resident, and the peak at least the current
        let (rss, hwm) = rss();
        assert!(rss > 0 && hwm >= rss, "{rss} {hwm}");
    }
}
