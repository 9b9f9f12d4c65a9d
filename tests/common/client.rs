//! What the socket tests share: a line client of the server's socket, and the counts of the
//! `stopped:` line a server prints at exit.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// One connection: lines written, answer lines read back as JSON.
pub struct Client {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`; a read waits at most 120 s.
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next answer line, or `None` at end of stream (EOF or reset).
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("answer is not JSON: {line:?}: {e}")),
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Writes `line` (a request line, without its newline) and reads its answer.
    pub fn ask(&mut self, line: &str) -> Value {
        self.send(format!("{line}\n").as_bytes());
        self.recv().expect("an answer")
    }

    /// Asks for `text` as a request object (`"id":"q"`).
    pub fn ask_text(&mut self, text: &str) -> Value {
        self.ask(&format!("{{\"id\":\"q\",\"text\":\"{text}\"}}"))
    }
}

/// The numbers of the `stopped:` line printed at exit: requests, answered, unanswered.
pub fn stopped_counts(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("stopped:"))
        .unwrap_or_else(|| panic!("no stopped line in {stderr}"));
    let number_before = |word: &str| -> u64 {
        let i = line.find(word).unwrap();
        let n = line[..i].trim_end().rsplit(' ').next().unwrap();
        n.parse().unwrap()
    };
    (
        number_before(" requests"),
        number_before(" answered"),
        number_before(" unanswered"),
    )
}
