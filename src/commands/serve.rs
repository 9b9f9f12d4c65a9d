//! `electra-edge serve`: the command around [`crate::server`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::{available_cores, split_cores, ServeArgs};
use crate::engine::Engine;
use crate::procfs;
use crate::server::{
    parse_group, parse_mode, serve_with_budget, Budget, Reload, ServerConfig, Shutdown, SocketFile,
};
use crate::systemd;

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| anyhow!("{what} of {s} seconds is not valid"))
}

/// `electra-edge serve`: socket activation or `--socket`, signals, load, [`serve_with_budget`],
/// clean-up. SIGTERM and SIGINT shut down; SIGHUP reloads the model folder (see [`Reload`]).
pub fn serve(args: &ServeArgs) -> Result<()> {
    // First, while single-threaded: a socket passed by systemd.
    let activated = if args.print_budget {
        None
    } else {
        systemd::listener_from_env().context("socket activation")?
    };
    let shutdown = Shutdown::new();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while shutting down exits at once (status 1).
        signal_hook::flag::register_conditional_shutdown(signal, 1, shutdown.flag())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, shutdown.flag())
            .context("cannot install signal handlers")?;
    }
    // SIGHUP (`systemctl reload`): reload the model. Installed before the load, so a SIGHUP
    // during start-up does not end the process (it is served once the server runs).
    let reload = Reload::new();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.flag())
        .context("cannot install signal handlers")?;
    let mode = parse_mode(&args.socket_mode)?;
    let group = args.socket_group.as_deref().map(parse_group).transpose()?;
    // Bind before the (slow) load: a live server is refused at once, and clients that connect
    // during the load wait in the backlog.
    let (listener, socket_file) = match (args.print_budget, activated, &args.socket) {
        (true, _, _) => (None, None),
        (false, Some(listener), _) => (Some(listener), None),
        (false, None, Some(path)) => {
            let (listener, file) = SocketFile::bind(path, mode, group)?;
            (Some(listener), Some(file))
        }
        (false, None, None) => bail!("--socket PATH is required (no socket passed by systemd)"),
    };
    let _ = systemd::status("loading model");
    let cores = available_cores();
    let (workers, threads) = split_cores(cores, args.workers, args.model.threads);
    if workers * threads > cores {
        log::warn!(
            "{workers} workers x {threads} threads oversubscribe the {cores} cores available"
        );
    }
    // The process without a model: what a reload's second model comes on top of.
    let (floor, _) = procfs::rss();
    let mut engine = Engine::load(&args.model.model, args.model.engine_options(threads))?;
    let mut config = ServerConfig::for_engine(&engine);
    config.workers = workers;
    config.max_connections = args.max_connections;
    if let Some(bytes) = args.max_line_bytes {
        config.max_line_bytes = bytes;
    }
    config.max_queue = args.max_queue;
    config.max_held_bytes = args
        .max_held_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| anyhow!("--max-held-mib {} is too large", args.max_held_mib))?;
    config.max_in_flight = args.max_in_flight;
    config.queue_timeout = seconds(args.queue_timeout, "--queue-timeout")?;
    config.idle_timeout = seconds(args.idle_timeout, "--idle-timeout")?;
    config.write_timeout = seconds(args.write_timeout, "--write-timeout")?;
    config.check()?;
    let _ = systemd::status("warming up at the largest window");
    let mut budget = Budget::measure(&engine, &config, Some(floor))?;
    // Default workers: as many as the cores, unless the cgroup's memory limit (MemoryMax=)
    // cannot hold their budget; then fewer, each with more threads.
    if let (None, Some(limit)) = (args.workers, procfs::cgroup_memory_max()) {
        let fit = budget.workers_within(&config, limit);
        if fit < config.workers {
            log::warn!(
                "{} workers need a budget of {:.1} MiB, over the cgroup's memory limit of {:.1} \
                 MiB: starting {fit} (--workers overrides)",
                config.workers,
                budget.total as f64 / (1 << 20) as f64,
                limit as f64 / (1 << 20) as f64,
            );
            config.workers = fit;
            let (_, threads_now) = split_cores(cores, Some(fit), args.model.threads);
            if threads_now != threads {
                // the int8 and attention ops take their thread count at load
                drop(engine);
                engine = Engine::load(&args.model.model, args.model.engine_options(threads_now))?;
            }
            // the same model: its measurements (and the high-water mark) still hold
            budget = budget.for_config(&config);
        }
    }
    let Some(listener) = listener else {
        println!("{}", budget.to_json());
        eprintln!("electra-edge: {budget}");
        return Ok(());
    };
    let where_ = socket_file.as_ref().map_or_else(
        || "the socket passed by systemd".to_string(),
        |f| f.path.display().to_string(),
    );
    eprintln!("electra-edge: serving on {where_}; {budget}");
    let report = serve_with_budget(Arc::new(engine), listener, config, shutdown, reload, budget)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "electra-edge: stopped: {} connections ({} rejected), {} requests, {} answered, \
         {} unanswered, {} slow clients dropped; peak RSS {:.1} MiB, budget {:.1} MiB",
        report.connections,
        report.rejected_connections,
        report.requests,
        report.answered,
        report.unanswered,
        report.dropped_slow_clients,
        mib(report.peak_rss),
        mib(report.budget.total),
    );
    drop(socket_file);
    Ok(())
}
