//! The fixed memory budget the server states before it accepts anything.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::gate::{FREE_PARSE_BYTES, JSON_AMPLIFICATION};
use super::ServerConfig;
use crate::engine::Engine;
use crate::procfs::rss;
use crate::protocol::{self, MAX_ID_BYTES};
use crate::tasks::AnswerOptions;

/// The fixed memory budget: what the process needs at most for the worst case the limits
/// allow. All values in bytes.
///
/// ```text
/// total = base
///       + (workers - 1) * window_peak
///       + workers * (worker_stack + request_state)
///       + max_connections * per_connection
///       + max_queue * (max_line_bytes + 128 * MAX_ID_BYTES)
///       + parsing
///       + slack
/// per_connection = reader_stack + writer_stack + read_buffer + max_line_bytes
///                + max_in_flight * max_response
/// request_state  = 4 * max_response        (tokens, window outputs, the answer's JSON tree)
/// parsing        = max_connections * FREE_PARSE_BYTES + 128 * max_line_bytes
/// slack          = (everything above) / 8  (allocator arenas and fragmentation)
/// ```
///
/// `parsing`: a JSON line becomes a tree of up to ~100 times its size while it is parsed (a
/// line of `[0],[0],...` does). Lines whose tree may exceed `FREE_PARSE_BYTES` (estimated from
/// their structure, see [`json_tree_bound`]) are parsed one at a time on one thread (one
/// allocator arena keeps their freed memory, not one per connection); a request's `id` is kept
/// only up to `MAX_ID_BYTES` serialized (it is echoed in every answer).
///
/// `base` is `VmHWM` after the model is loaded and one full-size window (the longest the model
/// runs) went through it with every answer option on: weights, plan, tokenizer and one window's
/// peak activations. `window_peak` is how much that one run raised the high-water mark (each
/// further worker can hold one). `max_response` is the longest answer line, scaled from that
/// run's answer to `max_chars` characters.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub model_file: u64,
    pub base: u64,
    pub window_peak: u64,
    pub max_response: u64,
    pub request_state: u64,
    pub per_connection: u64,
    pub connections: u64,
    pub workers: u64,
    pub queue: u64,
    pub parsing: u64,
    pub slack: u64,
    pub total: u64,
}

impl Budget {
    /// Runs one full window through `engine` and computes the budget for `config`.
    pub fn measure(engine: &Engine, config: &ServerConfig) -> Result<Budget> {
        let chars = engine.window_capacity();
        let text: String = "我爱北京天安门，今天天气很好。"
            .chars()
            .cycle()
            .take(chars)
            .collect();
        let options = AnswerOptions {
            raw: true,
            tokens: true,
            ..engine.options.defaults.clone()
        };
        let (rss_before, _) = rss();
        let response = engine
            .answer(&text, &options)
            .context("full-window warm-up failed")?;
        let answer_len =
            protocol::answer_line(Some(&json!(u64::MAX)), &text, &response).len() as u64;
        let (_, hwm) = rss();
        let model_file = engine.model.path.metadata().map_or(0, |m| m.len());
        let max_chars = engine.options.max_chars as u64;
        let max_response = (answer_len * max_chars)
            .div_ceil(chars as u64)
            .max(answer_len)
            + 1024;
        Ok(Budget::compute(
            config,
            model_file,
            hwm,
            hwm.saturating_sub(rss_before),
            max_response,
        ))
    }

    /// The formula of [`Budget`], from measured `base`, `window_peak` and `max_response`.
    pub fn compute(
        config: &ServerConfig,
        model_file: u64,
        base: u64,
        window_peak: u64,
        max_response: u64,
    ) -> Budget {
        let c = config;
        let line = c.max_line_bytes as u64;
        let request_state = 4 * max_response;
        let per_connection = (c.reader_stack + c.writer_stack + c.read_buffer) as u64
            + line
            + c.max_in_flight as u64 * max_response;
        let connections = c.max_connections as u64 * per_connection;
        let workers = (c.workers as u64 - 1) * window_peak
            + c.workers as u64 * (c.worker_stack as u64 + request_state);
        let queue = c.max_queue as u64 * (line + JSON_AMPLIFICATION * MAX_ID_BYTES as u64);
        let parsing =
            c.max_connections as u64 * FREE_PARSE_BYTES as u64 + JSON_AMPLIFICATION * line;
        let slack = (base + workers + connections + queue + parsing) / 8;
        Budget {
            model_file,
            base,
            window_peak,
            max_response,
            request_state,
            per_connection,
            connections,
            workers,
            queue,
            slack,
            parsing,
            total: base + workers + connections + queue + parsing + slack,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "total": self.total,
            "model_file": self.model_file,
            "base": self.base,
            "window_peak": self.window_peak,
            "max_response": self.max_response,
            "request_state": self.request_state,
            "per_connection": self.per_connection,
            "connections": self.connections,
            "workers": self.workers,
            "queue": self.queue,
            "parsing": self.parsing,
            "slack": self.slack,
        })
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "memory budget {:.1} MiB = base {:.1} (model file {:.1}, window peak {:.1}) + workers {:.1} \
             + connections {:.1} ({:.2} each, max answer {:.2}) + queue {:.1} + parsing {:.1} \
             + slack {:.1}",
            mib(self.total),
            mib(self.base),
            mib(self.model_file),
            mib(self.window_peak),
            mib(self.workers),
            mib(self.connections),
            mib(self.per_connection),
            mib(self.max_response),
            mib(self.queue),
            mib(self.parsing),
            mib(self.slack),
        )
    }
}
