//! `electra-edge pack`: the packed int8 weights sidecar of a model.

use anyhow::{Context, Result};

use crate::cli::PackArgs;
use crate::model::{
    self, cache_dir_from_env, cached_sidecar_path, sidecar_path, CannotWrite, CACHE_ENV,
};

/// `electra-edge pack`: writes the sidecar where [`crate::model::Model::load`] looks for it.
pub fn pack(args: &PackArgs) -> Result<()> {
    let onnx = args
        .onnx
        .clone()
        .unwrap_or_else(|| args.model.join("model.onnx"));
    let cache = args.weights_cache.clone().or_else(cache_dir_from_env);
    let out = match (&args.out, &cache) {
        (Some(out), _) => out.clone(),
        (None, Some(cache)) => {
            std::fs::create_dir_all(cache)
                .with_context(|| format!("cannot create {}", cache.display()))?;
            cached_sidecar_path(cache, &onnx)
        }
        (None, None) => sidecar_path(&onnx),
    };
    let report = model::pack(&onnx, &out).map_err(|e| {
        if args.out.is_none() && cache.is_none() && e.downcast_ref::<CannotWrite>().is_some() {
            e.context(format!(
                "(read-only model folder? use --weights-cache DIR and run with {CACHE_ENV}=DIR)"
            ))
        } else {
            e
        }
    })?;
    println!(
        "{}: {} packed int8 matrices, {:.1} MB",
        report.path.display(),
        report.entries,
        report.bytes as f64 / 1e6
    );
    Ok(())
}
