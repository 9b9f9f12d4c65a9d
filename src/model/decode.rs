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
    // Decode a copy of the file without the big initializers' bytes (they stay in the map and
    // tract reads them from it at parse, [`MapResolver`]), or the whole file when that copy
    // cannot be made.
    let thin = thin_model(path, &map);
    let moved = thin.as_ref().map_or(0, |(_, moved)| *moved);
    let bytes = thin.as_ref().map_or(&map[..], |(b, _)| &b[..]);
    let mut proto = ModelProto::decode(bytes).map_err(|e| {
        anyhow!(
            "{} is not a valid ONNX file (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    drop(thin);
    let fp = fingerprint.then(|| super::weights::model_fingerprint(&map[..]));
    let expanded = super::contrib::expand_contrib_ops(&mut proto)
        .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    if expanded > 0 {
        log::debug!(
            "{}: {expanded} onnxruntime contrib ops replaced by standard ONNX nodes",
            path.display()
        );
    }
    release_free_heap();
    drop_pages(&map, 0, map.len());
    log::debug!(
        "{}: {moved} initializers read from the map at parse",
        path.display()
    );
    Ok((proto, fp, Arc::new(map)))
}

/// Initializers at least this big are read by tract straight from the model's map instead of
/// from the decoded protobuf ([`thin_model`]).
const EXTERNAL_MIN_BYTES: usize = 16 * 1024;

/// One field of a protobuf message: its number, wire type, and where its key, payload and end
/// lie in the buffer (for length-delimited fields the payload is the bytes after the length).
struct Field {
    number: u64,
    wire: u64,
    start: usize,
    payload: usize,
    end: usize,
}

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

/// The fields of the message in `b[start..end]`, `None` on anything malformed (or groups).
fn fields(b: &[u8], start: usize, end: usize) -> Option<Vec<Field>> {
    let mut out = vec![];
    let mut i = start;
    while i < end {
        let key_at = i;
        let key = varint(b, &mut i)?;
        let payload = match key & 7 {
            0 => {
                let at = i;
                varint(b, &mut i)?;
                at
            }
            1 => {
                i += 8;
                i - 8
            }
            5 => {
                i += 4;
                i - 4
            }
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let at = i;
                i = i.checked_add(len)?;
                at
            }
            _ => return None,
        };
        if i > end {
            return None;
        }
        out.push(Field {
            number: key >> 3,
            wire: key & 7,
            start: key_at,
            payload,
            end: i,
        });
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The model file re-encoded without the bytes of its big initializers: each initializer whose
/// `raw_data` is at least [`EXTERNAL_MIN_BYTES`] becomes ONNX external data pointing at the
/// same bytes in the model file itself (location = its own name, offset, length), and
/// [`MapResolver`] serves tract those bytes from our map of the file (the same inode as
/// decoded, even if the path was replaced since). So the weights are never copied into the
/// decoded protobuf (~10 MB of copying and page faults for ELECTRA-small, and half the load's
/// peak). Fields are copied as they are, at the wire level (ModelProto.graph = 7,
/// GraphProto.initializer = 5, TensorProto.raw_data = 9, .external_data = 13,
/// .data_location = 14). `None` (decode the file whole) when the file is not really inside its
/// folder (tract refuses external data that resolves elsewhere) or is not well-formed
/// protobuf; with the number of initializers moved otherwise.
fn thin_model(path: &Path, map: &[u8]) -> Option<(Vec<u8>, usize)> {
    let name = path.file_name()?.to_str()?;
    let dir = model_dir(path)?;
    match (path.canonicalize(), Path::new(dir).canonicalize()) {
        (Ok(p), Ok(d)) if p.parent() == Some(d.as_path()) => {}
        _ => return None,
    }
    let mut moved = 0;
    let mut out = Vec::new();
    for f in fields(map, 0, map.len())? {
        if f.number == 7 && f.wire == 2 {
            let graph = thin_graph(map, &f, name, &mut moved)?;
            put_bytes(&mut out, 7, &graph);
        } else {
            out.extend_from_slice(&map[f.start..f.end]);
        }
    }
    Some((out, moved))
}

fn thin_graph(b: &[u8], graph: &Field, location: &str, moved: &mut usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for f in fields(b, graph.payload, graph.end)? {
        if f.number != 5 || f.wire != 2 {
            out.extend_from_slice(&b[f.start..f.end]);
            continue;
        }
        let tensor = fields(b, f.payload, f.end)?;
        let raw = tensor
            .iter()
            .find(|t| t.number == 9 && t.wire == 2 && t.end - t.payload >= EXTERNAL_MIN_BYTES);
        let external = tensor.iter().any(|t| t.number == 13 || t.number == 14);
        let (Some(raw), false) = (raw, external) else {
            out.extend_from_slice(&b[f.start..f.end]);
            continue;
        };
        let mut t = Vec::new();
        for field in tensor.iter().filter(|t| t.number != 9) {
            t.extend_from_slice(&b[field.start..field.end]);
        }
        for (key, value) in [
            ("location", location.to_string()),
            ("offset", raw.payload.to_string()),
            ("length", (raw.end - raw.payload).to_string()),
        ] {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, key.as_bytes());
            put_bytes(&mut entry, 2, value.as_bytes());
            put_bytes(&mut t, 13, &entry);
        }
        put_varint(&mut t, 14 << 3);
        put_varint(&mut t, 1); // DataLocation::External
        put_bytes(&mut out, 5, &t);
        *moved += 1;
    }
    Some(out)
}

fn model_dir(path: &Path) -> Option<&str> {
    match path.parent().and_then(Path::to_str) {
        Some("") => Some("."),
        other => other,
    }
}

/// Serves tract's external-data reads from our map of the model file (see [`thin_model`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{fixture, TempDir};

    fn entry<'a>(t: &'a tract_onnx::pb::TensorProto, key: &str) -> &'a str {
        &t.external_data.iter().find(|e| e.key == key).unwrap().value
    }

    /// The thin copy decodes to the same model as the file, but for the big initializers,
    /// which point at their own bytes in the file (and load to the same answers: parity suite).
    #[test]
    fn thin_copy_decodes_to_the_file_with_big_initializers_in_place() {
        let path = fixture("electra-small-zh/discriminator/model.onnx");
        let bytes = std::fs::read(&path).unwrap();
        let full = ModelProto::decode(&bytes[..]).unwrap();
        let (thin_bytes, moved) = thin_model(&path, &bytes).unwrap();
        assert!(thin_bytes.len() < bytes.len() / 10, "{}", thin_bytes.len());
        let thin = ModelProto::decode(&thin_bytes[..]).unwrap();
        let (fg, tg) = (full.graph.as_ref().unwrap(), thin.graph.as_ref().unwrap());
        assert_eq!(fg.node, tg.node);
        assert_eq!((&fg.input, &fg.output), (&tg.input, &tg.output));
        assert_eq!(full.opset_import, thin.opset_import);
        assert_eq!(fg.initializer.len(), tg.initializer.len());
        let mut seen = 0;
        for (f, t) in fg.initializer.iter().zip(&tg.initializer) {
            assert_eq!(
                (&f.name, &f.dims, f.data_type),
                (&t.name, &t.dims, t.data_type)
            );
            if f.raw_data.len() < EXTERNAL_MIN_BYTES {
                assert_eq!(f, t);
                continue;
            }
            seen += 1;
            assert!(t.raw_data.is_empty());
            assert_eq!(t.data_location, Some(1));
            assert_eq!(entry(t, "location"), "model.onnx");
            let off: usize = entry(t, "offset").parse().unwrap();
            let len: usize = entry(t, "length").parse().unwrap();
            assert_eq!(&bytes[off..off + len], &f.raw_data[..], "{}", f.name);
        }
        assert_eq!((seen, moved), (76, 76));
    }

    /// Anything the walk does not understand decodes the file whole; so does a file that is
    /// only linked into its folder.
    #[test]
    fn thin_copy_is_refused_when_unsure() {
        let path = fixture("electra-tiny-zh/discriminator/model.onnx");
        let bytes = std::fs::read(&path).unwrap();
        assert!(thin_model(&path, &bytes).is_some());
        assert!(thin_model(&path, &bytes[..bytes.len() - 3]).is_none());
        let mut group = bytes.clone();
        group.splice(0..0, [0x0b]); // field 1, wire type 3 (a group)
        assert!(thin_model(&path, &group).is_none());
        let dir = TempDir::new("thin-link");
        let link = dir.join("model.onnx");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(thin_model(&link, &bytes).is_none());
        // and the load through the link still works (the file decoded whole)
        let (proto, _, map) = decode(&link, false).unwrap();
        assert!(parse_typed(&link, &proto, map, Some(Some("logits"))).is_ok());
    }
}
