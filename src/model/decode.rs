//! Reading an ONNX file: memory-map and decode it (big initializers stay in the map;
//! onnxruntime's contrib ops replaced by standard nodes, [`super::contrib`]), then tract's parse
//! with our inputs bound and the wanted output selected, then typing.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use prost::Message;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use super::inputs::{bind_inputs, select_output, InputKind};
use super::memory::release_free_heap;

/// Maps and decodes an ONNX file; with `fingerprint`, also hashes its bytes.
pub(super) fn decode(
    path: &Path,
    fingerprint: bool,
) -> Result<(ModelProto, Option<u64>, Arc<Mmap>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty", path.display());
    }
    // The map is only read while loading (decode, then tract's parse reads the big
    // initializers from it through `MapResolver`) and is dropped before the load returns
    // (tract copies what it keeps).
    // SAFETY: read-only and short-lived; the file is never changed in place while mapped (the
    // deployment rule, module docs and README: model files are replaced by rename).
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    let mut proto = ModelProto::decode(&map[..]).map_err(|e| {
        anyhow!(
            "{} is not a valid ONNX file (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    let fp = fingerprint.then(|| super::weights::model_fingerprint(&map[..]));
    let expanded = super::contrib::expand_contrib_ops(&mut proto)
        .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    if expanded > 0 {
        log::debug!(
            "{}: {expanded} onnxruntime contrib ops replaced by standard ONNX nodes",
            path.display()
        );
    }
    let moved = externalize_initializers(path, &mut proto, &map);
    release_free_heap();
    drop_pages(&map, 0, map.len());
    log::debug!(
        "{}: {moved} initializers read from the map at parse",
        path.display()
    );
    Ok((proto, fp, Arc::new(map)))
}

/// Initializers at least this big are read by tract straight from the model's map instead of
/// from the decoded protobuf ([`externalize_initializers`]).
const EXTERNAL_MIN_BYTES: usize = 16 * 1024;

/// Where each initializer's `raw_data` lies in the ONNX file: (name, offset, length), found by
/// walking the protobuf wire format (ModelProto.graph = 7, GraphProto.initializer = 5,
/// TensorProto.name = 8, .raw_data = 9). `None` on anything unexpected.
fn raw_data_offsets(b: &[u8]) -> Option<Vec<(String, usize, usize)>> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// (field, payload start, payload end) of each length-delimited field of b[start..end].
    fn fields(b: &[u8], start: usize, end: usize) -> Option<Vec<(u64, usize, usize)>> {
        let mut out = vec![];
        let mut i = start;
        while i < end {
            let key = varint(b, &mut i)?;
            match key & 7 {
                0 => {
                    varint(b, &mut i)?;
                }
                1 => i += 8,
                5 => i += 4,
                2 => {
                    let len = varint(b, &mut i)? as usize;
                    let e = i.checked_add(len).filter(|&e| e <= end)?;
                    out.push((key >> 3, i, e));
                    i = e;
                }
                _ => return None,
            }
        }
        (i == end).then_some(out)
    }
    let mut found = vec![];
    for (f, gs, ge) in fields(b, 0, b.len())? {
        if f != 7 {
            continue;
        }
        for (f, ts, te) in fields(b, gs, ge)? {
            if f != 5 {
                continue;
            }
            let (mut name, mut raw) = (None, None);
            for (f, s, e) in fields(b, ts, te)? {
                match f {
                    8 => name = Some(std::str::from_utf8(&b[s..e]).ok()?.to_string()),
                    9 => raw = Some((s, e - s)),
                    _ => {}
                }
            }
            if let (Some(n), Some((off, len))) = (name, raw) {
                found.push((n, off, len));
            }
        }
    }
    Some(found)
}

/// Lowers the load's peak memory: tract's parse copies every initializer into a tensor while
/// the decoded protobuf still holds its own copy (twice the weights at once). This frees the
/// protobuf's copy of every big initializer and marks it as external data at its offset in the
/// model file itself; [`MapResolver`] then serves tract those bytes from our map of the file
/// (the same inode as decoded, even if the path was replaced since). Only when the file is
/// really inside its folder (tract refuses external data that resolves elsewhere). Returns
/// how many initializers were moved.
fn externalize_initializers(path: &Path, proto: &mut ModelProto, map: &[u8]) -> usize {
    use tract_onnx::pb::{tensor_proto::DataLocation, StringStringEntryProto};
    let (Some(name), Some(dir)) = (path.file_name().and_then(|n| n.to_str()), model_dir(path))
    else {
        return 0;
    };
    let inside = match (path.canonicalize(), Path::new(dir).canonicalize()) {
        (Ok(p), Ok(d)) => p.parent() == Some(d.as_path()),
        _ => false,
    };
    let Some(graph) = proto.graph.as_mut().filter(|_| inside) else {
        return 0;
    };
    let Some(offsets) = raw_data_offsets(map) else {
        return 0;
    };
    let offsets: std::collections::HashMap<&str, (usize, usize)> = offsets
        .iter()
        .map(|(n, o, l)| (n.as_str(), (*o, *l)))
        .collect();
    let mut moved = 0;
    for t in &mut graph.initializer {
        let Some(&(off, len)) = offsets.get(t.name.as_str()) else {
            continue;
        };
        if len < EXTERNAL_MIN_BYTES
            || len != t.raw_data.len()
            || map[off..off + len] != t.raw_data[..]
        {
            continue;
        }
        t.raw_data = Vec::new();
        t.data_location = Some(DataLocation::External as i32);
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.external_data = vec![
            kv("location", name.into()),
            kv("offset", off.to_string()),
            kv("length", len.to_string()),
        ];
        moved += 1;
    }
    moved
}

fn model_dir(path: &Path) -> Option<&str> {
    match path.parent().and_then(Path::to_str) {
        Some("") => Some("."),
        other => other,
    }
}

/// Serves tract's external-data reads from our map of the model file (see
/// [`externalize_initializers`]).
struct MapResolver(Arc<Mmap>);

impl tract_onnx::data_resolver::ModelDataResolver for MapResolver {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        _p: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        let end = length.map_or(Some(self.0.len()), |l| offset.checked_add(l));
        let bytes = end
            .and_then(|e| self.0.get(offset..e))
            .context("external data out of the model file")?;
        buf.extend_from_slice(bytes);
        drop_pages(&self.0, offset, bytes.len());
        Ok(())
    }
}

/// Takes pages of a read-only file map out of our resident set once read (they stay in the
/// page cache): while loading, the model file's pages would otherwise count in the process's
/// RSS on top of the copies made from them.
fn drop_pages(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: `map` is a shared, read-only mapping of a file (`Mmap::map`): MADV_DONTNEED only
    // unmaps its pages from our page tables, and the next read faults the same bytes back in
    // from the page cache (unlike a private or anonymous mapping, no data can be lost). The
    // range is in bounds (memmap2 checks it and aligns the start down to a page).
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
}

/// tract parse of a decoded proto, inputs bound, output selected (all kept when `output` is
/// `None`), then typed.
pub(super) fn parse_typed(
    path: &Path,
    proto: &ModelProto,
    map: Arc<Mmap>,
    output: Option<Option<&str>>,
) -> Result<(TypedModel, Vec<InputKind>)> {
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    onnx.provider = Arc::new(MapResolver(map));
    let parsed = crate::ops::guard::catch_tract("tract cannot read the graph", || {
        onnx.parse(proto, model_dir(path))
    })
    .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    if !parsed.unresolved_inputs.is_empty() {
        bail!(
            "{}: unresolved graph inputs {:?}",
            path.display(),
            parsed.unresolved_inputs
        );
    }
    let mut model = parsed.model;
    let inputs = bind_inputs(&mut model).with_context(|| path.display().to_string())?;
    if let Some(name) = output {
        select_output(&mut model, name).with_context(|| path.display().to_string())?;
    }
    let typed =
        crate::ops::guard::into_typed(model).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    Ok((typed, inputs))
}
