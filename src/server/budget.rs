//! The fixed memory budget the server states before it accepts anything.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::gate::{max_tree_bytes, FREE_PARSE_BYTES};
use super::ServerConfig;
use crate::engine::Engine;
use crate::procfs::rss;
use crate::protocol::{Request, MAX_ID_BYTES, MAX_ID_HEAP_BYTES};
use crate::tasks::AnswerOptions;

/// Bytes a held request costs besides its text, id and answer (the job, the boxed reply, the
/// channel slot).
const HELD_OVERHEAD: u64 = 1024;
/// A reply that is an error line: its message and an echoed id.
const ERROR_LINE: u64 = MAX_ID_BYTES as u64 + 1024;

/// The fixed memory budget: what the process needs at most for the worst case the limits
/// allow. All values in bytes.
///
/// ```text
/// total = base
///       + reload
///       + (workers - 1) * window_peak
///       + workers * (worker_stack + request_state)
///       + max_connections * per_connection
///       + held
///       + parsing
///       + slack
/// per_connection = reader_stack + writer_stack + read_buffer + write_buffer + max_line_bytes
///                + max_in_flight * error_line
/// held           = max(max_held_bytes, max_response)
/// request_state  = 4 * max_response        (tokens, window outputs, stitched outputs)
/// parsing        = max_connections * FREE_PARSE_BYTES + max_tree_bytes(max_line_bytes)
/// slack          = (everything above but base) / 8  (allocator arenas and fragmentation)
/// ```
///
/// `held`: every inference request reserves, when it is queued, what it will hold until its
/// answer is written: its text and id ([`Request::heap_bytes`]) and a typed answer of its length
/// (`answer_per_char` x characters, [`crate::tasks::Response::heap_bytes`]: numbers and
/// character offsets; the writer serializes answers straight into its 8 KiB buffer, a finished
/// JSON line is never held). Requests wait for room under `max_held_bytes` (all connections
/// together), so this term does not grow with the connections.
///
/// `parsing`: a JSON line becomes a tree of up to ~100 times its size while it is parsed (a
/// line of `[0],[0],...` does). Lines whose tree may exceed `FREE_PARSE_BYTES` (estimated from
/// their structure, see [`super::json_tree_bound`]) are parsed one at a time on one thread (one
/// allocator arena keeps their freed memory, not one per connection); lines whose tree may
/// exceed [`max_tree_bytes`] (far more JSON values than a request has) are refused unparsed.
///
/// `base` is `VmHWM` after the model is loaded and one full-size window (the longest the model
/// runs) went through it with every answer option on: weights, plan, tokenizer and one window's
/// peak activations.
///
/// `reload` is what a reload (SIGHUP) adds: the new model is loaded, self-checked and warmed up
/// beside the one serving, which is dropped only once the new one answers, so for a moment the
/// process holds two models. It is one model at its load peak: `base - floor`, where `floor` is
/// `VmRSS` before the model was loaded (the process without a model; when unknown, 0, and the
/// reload counts the whole base). A reload to a bigger model raises the budget's model parts to
/// what the reload measured ([`Budget::after_reload`]); they never shrink.
///
/// `window_peak` is how much that one run raised the high-water mark (each
/// further worker can hold one). `answer_per_char` is that run's typed answer per character;
/// `max_response` what the longest request (`max_chars` characters of 4 bytes, the largest id)
/// holds with its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub model_file: u64,
    pub base: u64,
    pub floor: u64,
    pub reload: u64,
    pub window_peak: u64,
    pub answer_per_char: u64,
    pub max_chars: u64,
    pub max_response: u64,
    pub request_state: u64,
    pub per_connection: u64,
    pub connections: u64,
    pub workers: u64,
    pub held: u64,
    pub parsing: u64,
    pub slack: u64,
    pub total: u64,
}

/// One full-size window through `engine` with every answer option on: the answer's bytes per
/// character, and `VmRSS` before and `VmHWM` after the run.
fn full_window(engine: &Engine) -> Result<(u64, u64, u64)> {
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
    let answer_per_char = (response.heap_bytes() as u64).div_ceil(chars.max(1) as u64);
    let (_, hwm) = rss();
    Ok((answer_per_char, rss_before, hwm))
}

fn model_file(engine: &Engine) -> u64 {
    engine.model.path.metadata().map_or(0, |m| m.len())
}

/// The measured parts of a [`Budget`] (bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub model_file: u64,
    pub base: u64,
    pub floor: u64,
    pub reload: u64,
    pub window_peak: u64,
    pub answer_per_char: u64,
    pub max_chars: u64,
}

impl Budget {
    /// Runs one full window through `engine` and computes the budget for `config`. `floor` is
    /// `VmRSS` before the engine was loaded, when known (see [`Budget`]'s `reload`).
    pub fn measure(engine: &Engine, config: &ServerConfig, floor: Option<u64>) -> Result<Budget> {
        let (answer_per_char, rss_before, hwm) = full_window(engine)?;
        let floor = floor.unwrap_or(0).min(hwm);
        Ok(Budget::compute(
            config,
            Measured {
                model_file: model_file(engine),
                base: hwm,
                floor,
                reload: hwm - floor,
                window_peak: hwm.saturating_sub(rss_before),
                answer_per_char,
                max_chars: engine.options.max_chars as u64,
            },
        ))
    }

    /// The budget once a reload has loaded `engine` beside the serving model: `rss_before_load`
    /// and `hwm_before_load` are `VmRSS` and `VmHWM` from just before the load started, and
    /// `hwm_after_load` `VmHWM` after it. Runs the new model's full-size window (as
    /// [`Budget::measure`] does at start-up). Where the high-water mark rose, the new model
    /// needed more than the budget knew: the reload term becomes that rise over
    /// `rss_before_load` (the load's peak), the window peak the window's; nothing shrinks.
    pub fn after_reload(
        &self,
        engine: &Engine,
        config: &ServerConfig,
        rss_before_load: u64,
        hwm_before_load: u64,
        hwm_after_load: u64,
    ) -> Result<Budget> {
        let (answer_per_char, rss_before_window, hwm) = full_window(engine)?;
        let mut m = self.measured();
        if hwm_after_load > hwm_before_load {
            m.reload = m.reload.max(hwm_after_load - rss_before_load);
        }
        if hwm > hwm_after_load {
            m.window_peak = m.window_peak.max(hwm.saturating_sub(rss_before_window));
        }
        m.base = m.base.max(m.floor + m.reload);
        m.answer_per_char = m.answer_per_char.max(answer_per_char);
        m.model_file = model_file(engine);
        Ok(Budget::compute(config, m))
    }

    /// The budget for another `config` (same model and measurements).
    pub fn for_config(&self, config: &ServerConfig) -> Budget {
        Budget::compute(config, self.measured())
    }

    fn measured(&self) -> Measured {
        Measured {
            model_file: self.model_file,
            base: self.base,
            floor: self.floor,
            reload: self.reload,
            window_peak: self.window_peak,
            answer_per_char: self.answer_per_char,
            max_chars: self.max_chars,
        }
    }

    /// The most workers, at most `config.workers` and at least 1, whose budget fits `limit`.
    pub fn workers_within(&self, config: &ServerConfig, limit: u64) -> usize {
        (1..=config.workers.max(1))
            .rev()
            .find(|&workers| {
                let c = ServerConfig {
                    workers,
                    ..config.clone()
                };
                self.for_config(&c).total <= limit
            })
            .unwrap_or(1)
    }

    /// What `request` reserves from `held` until its answer is written.
    pub fn request_bytes(&self, request: &Request) -> u64 {
        let chars = request.text.chars().count() as u64;
        request.heap_bytes() as u64 + self.answer_per_char * chars + HELD_OVERHEAD
    }

    /// The formula of [`Budget`], from the measured parts.
    pub fn compute(config: &ServerConfig, measured: Measured) -> Budget {
        let Measured {
            model_file,
            base,
            floor,
            reload,
            window_peak,
            answer_per_char,
            max_chars,
        } = measured;
        let c = config;
        let line = c.max_line_bytes as u64;
        let max_request =
            (std::mem::size_of::<Request>() + MAX_ID_HEAP_BYTES) as u64 + 4 * max_chars;
        let max_response = max_request + answer_per_char * max_chars + HELD_OVERHEAD;
        let request_state = 4 * max_response;
        let per_connection = (c.reader_stack + c.writer_stack + c.read_buffer + c.write_buffer)
            as u64
            + line
            + c.max_in_flight as u64 * ERROR_LINE;
        let connections = c.max_connections as u64 * per_connection;
        let workers = (c.workers as u64 - 1) * window_peak
            + c.workers as u64 * (c.worker_stack as u64 + request_state);
        let held = c.max_held_bytes.max(max_response);
        let parsing = c.max_connections as u64 * FREE_PARSE_BYTES as u64
            + max_tree_bytes(c.max_line_bytes) as u64;
        let slack = (workers + connections + held + parsing) / 8;
        Budget {
            model_file,
            base,
            floor,
            reload,
            window_peak,
            answer_per_char,
            max_chars,
            max_response,
            request_state,
            per_connection,
            connections,
            workers,
            held,
            parsing,
            slack,
            total: base + reload + workers + connections + held + parsing + slack,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "total": self.total,
            "model_file": self.model_file,
            "base": self.base,
            "floor": self.floor,
            "reload": self.reload,
            "window_peak": self.window_peak,
            "max_response": self.max_response,
            "request_state": self.request_state,
            "per_connection": self.per_connection,
            "connections": self.connections,
            "workers": self.workers,
            "held": self.held,
            "answer_per_char": self.answer_per_char,
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
            "memory budget {:.1} MiB = base {:.1} (model file {:.1}, window peak {:.1}) \
             + reload {:.1} + workers {:.1} + connections {:.1} ({:.2} each) \
             + held {:.1} (longest request {:.2}) + parsing {:.1} + slack {:.1}",
            mib(self.total),
            mib(self.base),
            mib(self.model_file),
            mib(self.window_peak),
            mib(self.reload),
            mib(self.workers),
            mib(self.connections),
            mib(self.per_connection),
            mib(self.held),
            mib(self.max_response),
            mib(self.parsing),
            mib(self.slack),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn budget(workers: usize) -> Budget {
        let config = ServerConfig {
            workers,
            ..ServerConfig::default()
        };
        Budget::compute(
            &config,
            Measured {
                model_file: 12 * MIB,
                base: 50 * MIB,
                floor: 8 * MIB,
                reload: 42 * MIB,
                window_peak: 12 * MIB,
                answer_per_char: 32,
                max_chars: 20_000,
            },
        )
    }

    #[test]
    fn the_formula_adds_up() {
        let c = ServerConfig::default();
        let b = budget(2);
        let parts = b.base + b.reload + b.workers + b.connections + b.held + b.parsing + b.slack;
        assert_eq!(b.total, parts);
        assert_eq!(b.connections, c.max_connections as u64 * b.per_connection);
        assert_eq!(b.held, c.max_held_bytes.max(b.max_response));
        assert_eq!(b.slack, (parts - b.base - b.reload - b.slack) / 8);
        // the longest request: 20,000 four-byte characters, the largest id, 32 bytes per
        // character of answer
        assert!(b.max_response > 80_000 + 32 * 20_000 && b.max_response < 800_000);
        // one more worker: its window, stack and request state (+ slack)
        let more = budget(3).total - b.total;
        let worker = b.window_peak + c.worker_stack as u64 + b.request_state;
        assert!(more >= worker && more <= worker + worker / 8 + 1, "{more}");
    }

    #[test]
    fn workers_are_fitted_to_a_memory_limit() {
        let b = budget(4);
        let c = ServerConfig {
            workers: 4,
            ..ServerConfig::default()
        };
        assert_eq!(b.workers_within(&c, u64::MAX), 4);
        assert_eq!(b.workers_within(&c, b.total), 4);
        assert_eq!(b.workers_within(&c, b.total - 1), 3);
        assert_eq!(b.workers_within(&c, budget(2).total), 2);
        // never fewer than one, even when one does not fit
        assert_eq!(b.workers_within(&c, MIB), 1);
    }

    #[test]
    fn a_request_reserves_its_text_id_and_answer() {
        let b = budget(1);
        let request = |text: &str| Request {
            id: Some(serde_json::json!("a-id")),
            text: text.to_string(),
            options: Default::default(),
        };
        let short = b.request_bytes(&request("你好"));
        let long = b.request_bytes(&request(&"你".repeat(1000)));
        // 998 more characters: 3 bytes of text and 32 of answer each
        assert_eq!(long - short, 998 * (3 + 32));
        assert!((HELD_OVERHEAD + 2 * 32..2 * HELD_OVERHEAD).contains(&short));
    }
}
