//! Log lines for journald: whether stderr is the journal, and the `<N>` priority prefixes.

/// Whether stderr is connected to the journal (systemd sets `JOURNAL_STREAM=DEV:INODE` to the
/// device and inode of the stream it gave us; see `systemd.exec(5)`). When true, log lines
/// should carry no timestamp (journald adds one) and may start with a [`journal_priority`]
/// prefix such as `<4>`, which journald turns into the entry's priority.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), meta.dev(), meta.ino())
}

/// Pure form of [`stderr_is_journal`]: does `JOURNAL_STREAM` (`"DEV:INODE"`, decimal) name
/// the stream with device `dev` and inode `ino`?
pub fn journal_stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix, for a `log` level:
/// error 3, warn 4, info 6, debug and trace 7.
pub fn journal_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_helpers() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("8:12345", 9, 12345));
        assert!(!journal_stream_matches("", 0, 0));
        assert!(!journal_stream_matches("x:y", 0, 0));
        assert_eq!(journal_priority(log::Level::Error), 3);
        assert_eq!(journal_priority(log::Level::Warn), 4);
        assert_eq!(journal_priority(log::Level::Info), 6);
        assert_eq!(journal_priority(log::Level::Trace), 7);
    }
}
