//! Reading one request line with a byte limit.

use std::io::{self, BufRead};

/// One line read with a byte limit.
#[derive(Debug, PartialEq, Eq)]
pub enum BoundedLine {
    /// The line's bytes are in the buffer (newline removed).
    Line,
    /// The line was longer than the limit; it was read to its end and discarded.
    TooLong { bytes: usize },
}

/// Reads one line into `buf` (cleared first) keeping at most `max_bytes` bytes in memory: a
/// longer line is consumed and dropped. `Ok(None)` at end of input. A last line without a
/// newline still counts as a line.
pub fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max_bytes: usize,
) -> io::Result<Option<BoundedLine>> {
    buf.clear();
    let mut total = 0usize;
    let mut seen_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match (seen_any, total > max_bytes) {
                (false, _) => None,
                (true, true) => Some(BoundedLine::TooLong { bytes: total }),
                (true, false) => Some(BoundedLine::Line),
            });
        }
        seen_any = true;
        let (part, consumed, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        total += part.len();
        if total <= max_bytes {
            buf.extend_from_slice(part);
        } else {
            buf.clear();
        }
        reader.consume(consumed);
        if done {
            return Ok(Some(if total > max_bytes {
                BoundedLine::TooLong { bytes: total }
            } else {
                BoundedLine::Line
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let input = b"short\nthis line is too long\n\nlast";
        let mut reader = io::BufReader::with_capacity(4, &input[..]);
        let mut buf = vec![];
        let mut got = vec![];
        while let Some(line) = read_bounded_line(&mut reader, &mut buf, 8).unwrap() {
            got.push((line, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (BoundedLine::Line, "short".to_string()),
                (BoundedLine::TooLong { bytes: 21 }, String::new()),
                (BoundedLine::Line, String::new()),
                (BoundedLine::Line, "last".to_string()),
            ]
        );
    }
}
