//! Memory figures of a process from Linux's `/proc/PID/status` (all in bytes; 0 where `/proc`
//! is not readable or a field is missing), for load logs, the server's budget and stats,
//! benchmarks and tests; and the memory limit of the process's cgroup (systemd's `MemoryMax=`).

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

/// The tightest memory limit of this process's cgroup and its ancestors (cgroup v2
/// `memory.max`, v1 `memory.limit_in_bytes`; systemd's `MemoryMax=` sets the first), if any.
pub fn cgroup_memory_max() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    memory_limit(&cgroups, |path| std::fs::read_to_string(path).ok())
}

/// [`cgroup_memory_max`] for a `/proc/PID/cgroup` text, reading limit files with `read`.
fn memory_limit(cgroups: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut tightest: Option<u64> = None;
    for line in cgroups.lines() {
        // `0::/path` (v2) or `N:controller,...:/path` (v1)
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        // the cgroup itself and each ancestor: /a/b/c, /a/b, /a
        let mut dir = path.trim_end_matches('/');
        while !dir.is_empty() {
            let limit = read(&format!("{root}{dir}/{file}"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                // "max", or v1's "unlimited" (a page-rounded i64::MAX)
                .filter(|&v| v < 1 << 60);
            if let Some(v) = limit {
                tightest = Some(tightest.map_or(v, |t| t.min(v)));
            }
            dir = &dir[..dir.rfind('/').unwrap_or(0)];
        }
    }
    tightest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_memory_limits_v2_and_v1() {
        let files = |path: &str| -> Option<String> {
            match path {
                "/sys/fs/cgroup/system.slice/electra-edge.service/memory.max" => {
                    Some("134217728\n")
                }
                "/sys/fs/cgroup/system.slice/memory.max" => Some("max\n"),
                "/sys/fs/cgroup/user.slice/memory.max" => Some("100000000\n"),
                "/sys/fs/cgroup/user.slice/user-1.slice/memory.max" => Some("200000000\n"),
                "/sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes" => {
                    Some("9223372036854771712\n")
                }
                "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes" => Some("536870912\n"),
                _ => None,
            }
            .map(String::from)
        };
        let v2 = "0::/system.slice/electra-edge.service\n";
        assert_eq!(memory_limit(v2, files), Some(128 << 20));
        // an ancestor's limit is tighter
        assert_eq!(
            memory_limit("0::/user.slice/user-1.slice/x\n", files),
            Some(100_000_000)
        );
        assert_eq!(memory_limit("0::/\n", files), None);
        assert_eq!(memory_limit("0::/system.slice/other\n", files), None);
        let v1 = "12:cpu,cpuacct:/docker/x\n11:memory:/docker/x\n";
        assert_eq!(memory_limit(v1, files), Some(512 << 20));
        assert_eq!(memory_limit("garbage\n", files), None);
    }

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
