//! `electra-edge check`: a model folder against its `manifest.json`.

use anyhow::{bail, Result};

use crate::cli::ModelArgs;
use crate::engine::Engine;
use crate::selfcheck;

/// Checksums, then the golden outputs; one line of result.
pub fn check(args: &ModelArgs) -> Result<()> {
    let manifest = args.model.join("manifest.json");
    if !manifest.exists() {
        bail!(
            "{} has no manifest.json: nothing to check against",
            args.model.display()
        );
    }
    let bad = selfcheck::mismatched_files(&args.model)?;
    if !bad.is_empty() {
        bail!(
            "{}: files differ from manifest.json checksums: {}",
            args.model.display(),
            bad.join(", ")
        );
    }
    let engine = Engine::load(&args.model, args.engine_options())?;
    let report = match engine.self_check {
        Some(report) => report,
        None => engine.self_check()?,
    };
    println!(
        "ok: {} golden texts, max |output - reference| {} (bound {}), checksums match",
        report.checked, report.max_error, report.bound
    );
    Ok(())
}
