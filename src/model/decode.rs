//! Reading an ONNX file: memory-map and decode it (big initializers stay in the map;
//! onnxruntime's contrib ops replaced by standard nodes, [`super::contrib`]), then tract's parse
//! with the big initializers added as constants straight from the map, our inputs bound and the
//! wanted output selected, then typing.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use prost::Message;
use tract_onnx::model::ParseResult;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::ops::{konst::Const, source::Source};

use super::inputs::{bind_inputs, select_output, InputKind};

/// A model file, decoded.
pub(super) struct Decoded {
    /// The model without its big initializers (contrib ops expanded).
    proto: ModelProto,
    /// The initializers left out of `proto`, found in `map`.
    detached: Vec<Detached>,
    /// The whole file, read-only.
    map: Mmap,
    /// The ONNX external-data files the model's initializers name (`model.onnx_data`), as
    /// tract will open them (relative to the model's folder), each once.
    external: Vec<std::path::PathBuf>,
}

impl Decoded {
    /// The fingerprint a packed-weights sidecar records: every byte of the ONNX file and of
    /// the external-data files it names (weights there can change while the ONNX file stays
    /// byte for byte the same). A file that cannot be read counts as empty (the parse then
    /// fails on it anyway). For a file naming no external data, `model_fingerprint` of it.
    pub fn fingerprint(&self) -> u64 {
        // the sidecar format's hash, which `model_fingerprint` is
        let fingerprint_of = crate::int8::sidecar::fingerprint;
        let mut h = fingerprint_of(&self.map[..]);
        for path in &self.external {
            let file = File::open(path).ok();
            // SAFETY: read-only and dropped at the end of this iteration; the files are
            // never changed in place while mapped (the deployment rule for model files).
            let map = file.and_then(|f| unsafe { Mmap::map(&f) }.ok());
            let bytes: &[u8] = map.as_deref().unwrap_or_default();
            let mut pair = h.to_le_bytes().to_vec();
            pair.extend(fingerprint_of(bytes).to_le_bytes());
            h = fingerprint_of(&pair);
        }
        h
    }
}

/// A big initializer left out of the decoded protobuf ([`thin_model`]): tract's parse sees its
/// name as an unresolved input, and [`attach_detached`] turns that into a constant made from
/// the bytes in the model file's map (one copy, where tract's own loading makes two).
#[derive(Clone, Debug, PartialEq)]
struct Detached {
    name: String,
    datum_type: DatumType,
    shape: Vec<usize>,
    /// The `raw_data` bytes in the file.
    bytes: Range<usize>,
}

/// Maps and decodes an ONNX file.
pub(super) fn decode(path: &Path) -> Result<Decoded> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty", path.display());
    }
    // The map is only read while loading (decode, then the big initializers are copied out of
    // it after tract's parse, [`attach_detached`]) and is dropped before the load returns.
    // SAFETY: read-only and short-lived; the file is never changed in place while mapped (the
    // deployment rule, module docs and docs/model-folders.md: model files are replaced by rename).
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    // Decode a copy of the file without the big initializers, or the whole file when that copy
    // cannot be made.
    let thin = thin_model(&map);
    let bytes = thin.as_ref().map_or(&map[..], |(b, _)| &b[..]);
    let mut proto = ModelProto::decode(bytes).map_err(|e| {
        anyhow!(
            "{} is not a valid ONNX file (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    let detached = thin.map(|(_, d)| d).unwrap_or_default();
    let external = external_files(path, &proto);
    let known: Vec<(&str, Vec<i64>)> = detached
        .iter()
        .map(|d| (d.name.as_str(), d.shape.iter().map(|&n| n as i64).collect()))
        .collect();
    let expanded = super::contrib::expand_contrib_ops(&mut proto, &known)
        .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    if expanded > 0 {
        log::debug!(
            "{}: {expanded} onnxruntime contrib ops replaced by standard ONNX nodes",
            path.display()
        );
    }
    drop_pages(&map, 0, map.len());
    log::debug!(
        "{}: {} initializers to be read from the map after parse",
        path.display(),
        detached.len()
    );
    Ok(Decoded {
        proto,
        detached,
        map,
        external,
    })
}

/// The external-data files of the graph's initializers, resolved from the model's folder,
/// sorted, each once.
fn external_files(path: &Path, proto: &ModelProto) -> Vec<std::path::PathBuf> {
    let dir = Path::new(model_dir(path).unwrap_or("."));
    let mut files: Vec<_> = proto
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter(|t| t.data_location == Some(DataLocation::External as i32))
        .filter_map(|t| t.external_data.iter().find(|e| e.key == "location"))
        .map(|e| dir.join(&e.value))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Initializers at least this big are left out of the decoded protobuf and copied straight
/// from the model's map ([`thin_model`]).
const DETACH_MIN_BYTES: usize = 16 * 1024;

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

/// The model file re-encoded without its big initializers: each initializer whose `raw_data`
/// is at least [`DETACH_MIN_BYTES`] of a plain numeric type, with a shape its bytes fill
/// exactly, is left out and described by a [`Detached`] instead. So the weights are never
/// copied into the decoded protobuf nor read twice by tract (~20 MB of copying and page faults
/// for ELECTRA-small). Fields are copied as they are, at the wire level (ModelProto.graph = 7,
/// GraphProto.initializer = 5; TensorProto.dims = 1, .data_type = 2, .name = 8, .raw_data = 9).
/// `None` (decode the file whole) when the file is not well-formed protobuf or two
/// initializers share a name.
fn thin_model(map: &[u8]) -> Option<(Vec<u8>, Vec<Detached>)> {
    let mut detached = vec![];
    // (capacity for the whole file: pages never written are never touched, and no growth
    // copies the bytes again)
    let mut out = Vec::with_capacity(map.len());
    for f in fields(map, 0, map.len())? {
        if f.number == 7 && f.wire == 2 {
            let graph = thin_graph(map, &f, &mut detached)?;
            put_bytes(&mut out, 7, &graph);
        } else {
            out.extend_from_slice(&map[f.start..f.end]);
        }
    }
    let mut names: Vec<&str> = detached.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    Some((out, detached))
}

fn thin_graph(b: &[u8], graph: &Field, detached: &mut Vec<Detached>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(graph.end - graph.payload);
    for f in fields(b, graph.payload, graph.end)? {
        if f.number == 5 && f.wire == 2 {
            if let Some(d) = detachable(b, &f)? {
                detached.push(d);
                continue;
            }
        }
        out.extend_from_slice(&b[f.start..f.end]);
    }
    Some(out)
}

/// The initializer (a TensorProto field) as a [`Detached`] if it can be one (`Some(None)` if
/// it stays in the protobuf; `None` if it is malformed).
fn detachable(b: &[u8], init: &Field) -> Option<Option<Detached>> {
    let tensor = fields(b, init.payload, init.end)?;
    let mut shape = vec![];
    let (mut data_type, mut name, mut raw) = (0, None, None);
    for t in &tensor {
        match (t.number, t.wire) {
            (1, 0) => shape.push(varint(b, &mut t.payload.clone())? as i64),
            (1, 2) => {
                let mut i = t.payload;
                while i < t.end {
                    shape.push(varint(b, &mut i)? as i64);
                }
            }
            (2, 0) => data_type = varint(b, &mut t.payload.clone())?,
            (8, 2) => name = Some(std::str::from_utf8(&b[t.payload..t.end]).ok()?),
            (9, 2) => raw = Some(t.payload..t.end),
            // segments, typed data, external data, doc strings, metadata: leave it to tract
            (3 | 4..=7 | 10 | 11 | 13 | 14, _) => return Some(None),
            _ => {}
        }
    }
    let (Some(name), Some(raw)) = (name, raw) else {
        return Some(None);
    };
    // tract-onnx's own mapping of ONNX data types; plain numbers only: any bytes are a valid
    // value of these types (see `attach_detached`)
    let datum_type = i32::try_from(data_type)
        .ok()
        .and_then(|t| DataType::try_from(t).ok())
        .and_then(|t| DatumType::try_from(t).ok())
        .filter(|t| t.is_integer() || t.is_float());
    let Some(datum_type) = datum_type else {
        return Some(None);
    };
    let shape: Option<Vec<usize>> = shape.iter().map(|&d| usize::try_from(d).ok()).collect();
    let Some(shape) = shape else {
        return Some(None);
    };
    let fills = shape
        .iter()
        .try_fold(datum_type.size_of(), |n, &d| n.checked_mul(d))
        == Some(raw.len());
    if raw.len() < DETACH_MIN_BYTES || name.is_empty() || !fills {
        return Some(None);
    }
    Some(Some(Detached {
        name: name.to_owned(),
        datum_type,
        shape,
        bytes: raw,
    }))
}

fn model_dir(path: &Path) -> Option<&str> {
    match path.parent().and_then(Path::to_str) {
        Some("") => Some("."),
        other => other,
    }
}

/// Makes each detached initializer a constant of the parsed model: tract made its name an
/// unresolved input (or, when the graph lists it among its inputs, a source), which becomes a
/// constant with the bytes from the model file's map.
fn attach_detached(parsed: &mut ParseResult, detached: &[Detached], map: &Mmap) -> Result<()> {
    for d in detached {
        let Some(&outlet) = parsed.outlets_by_name.get(&d.name) else {
            continue; // used by no node
        };
        let node = &mut parsed.model.nodes[outlet.node];
        if !node.op_is::<Source>() || outlet.slot != 0 {
            bail!("initializer {:?} has the name of a node's output", d.name);
        }
        let bytes = map
            .get(d.bytes.clone())
            .context("initializer out of the model file")?;
        // SAFETY: `from_raw_dt` reinterprets the bytes as values of `datum_type`, which
        // `detachable` only allows for plain numeric types (integers and floats), for which every
        // bit pattern is a valid value; it copies them into its own aligned buffer after checking
        // that their length is what the shape needs.
        let tensor = unsafe { Tensor::from_raw_dt(d.datum_type, &d.shape, bytes) }?;
        drop_pages(map, d.bytes.start, d.bytes.len());
        let tensor = tensor.into_arc_tensor();
        node.outputs[0].fact = TypedFact::try_from(tensor.clone())?.into();
        node.op = Box::new(Const::new(tensor)?);
        parsed.model.inputs.retain(|&o| o != outlet);
        parsed.unresolved_inputs.retain(|n| *n != d.name);
    }
    Ok(())
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

/// tract parse of a decoded model, detached initializers attached, inputs bound, output
/// selected (all kept when `output` is `None`), then typed; with our parsers of some ops
/// (`onnx_ops`), those of our transformer ops too when `our_ops`.
pub(super) fn parse_typed(
    path: &Path,
    decoded: &Decoded,
    output: Option<Option<&str>>,
    our_ops: bool,
) -> Result<(TypedModel, Vec<InputKind>)> {
    // tract's own resolver reads genuine external data (`model.onnx_data` next to the file)
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    super::onnx_ops::register(&mut onnx.op_register, our_ops);
    let mut parsed = crate::ops::guard::catch_tract("tract cannot read the graph", || {
        onnx.parse(&decoded.proto, model_dir(path))
    })
    .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    attach_detached(&mut parsed, &decoded.detached, &decoded.map)
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

    use tract_onnx::pb::StringStringEntryProto;

    use std::path::PathBuf;

    use crate::testutil::{fixture, TempDir};

    /// The thin copy decodes to the file's model without the big initializers, and each
    /// detached one describes its own bytes in the file.
    #[test]
    fn thin_copy_leaves_out_the_big_initializers() {
        let path = fixture("electra-small-zh/discriminator/model.onnx");
        let bytes = std::fs::read(&path).unwrap();
        let full = ModelProto::decode(&bytes[..]).unwrap();
        let (thin_bytes, detached) = thin_model(&bytes).unwrap();
        assert!(thin_bytes.len() < bytes.len() / 10, "{}", thin_bytes.len());
        let thin = ModelProto::decode(&thin_bytes[..]).unwrap();
        let (fg, tg) = (full.graph.as_ref().unwrap(), thin.graph.as_ref().unwrap());
        assert_eq!(fg.node, tg.node);
        assert_eq!((&fg.input, &fg.output), (&tg.input, &tg.output));
        assert_eq!(full.opset_import, thin.opset_import);
        let (big, small): (Vec<_>, Vec<_>) = fg
            .initializer
            .iter()
            .partition(|t| t.raw_data.len() >= DETACH_MIN_BYTES);
        assert_eq!(small, tg.initializer.iter().collect::<Vec<_>>());
        assert_eq!(big.len(), 76);
        assert_eq!(detached.len(), big.len());
        for (t, d) in big.iter().zip(&detached) {
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            assert_eq!((&t.name, &dims), (&d.name, &d.shape));
            let want = match t.data_type {
                1 => DatumType::F32,
                2 => DatumType::U8,
                3 => DatumType::I8,
                other => panic!("{}: data type {other}", t.name),
            };
            assert_eq!(d.datum_type, want, "{}", t.name);
            assert_eq!(&bytes[d.bytes.clone()], &t.raw_data[..], "{}", t.name);
        }
    }

    /// Anything the walk does not understand decodes the file whole; a file reached through a
    /// link loads like the file.
    #[test]
    fn thin_copy_is_refused_when_unsure() {
        let path = fixture("electra-tiny-zh/discriminator/model.onnx");
        let bytes = std::fs::read(&path).unwrap();
        assert!(thin_model(&bytes).is_some());
        assert!(thin_model(&bytes[..bytes.len() - 3]).is_none());
        let mut group = bytes.clone();
        group.splice(0..0, [0x0b]); // field 1, wire type 3 (a group)
        assert!(thin_model(&group).is_none());
        // two big initializers of one name
        let mut twice = ModelProto::decode(&bytes[..]).unwrap();
        let g = twice.graph.as_mut().unwrap();
        let big = g
            .initializer
            .iter()
            .find(|t| t.raw_data.len() >= DETACH_MIN_BYTES)
            .unwrap()
            .clone();
        g.initializer.push(big);
        assert!(thin_model(&twice.encode_to_vec()).is_none());

        let dir = TempDir::new("thin-link");
        let link = dir.join("model.onnx");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let decoded = decode(&link).unwrap();
        assert!(!decoded.detached.is_empty());
        assert!(parse_typed(&link, &decoded, Some(Some("logits")), true).is_ok());
    }

    /// The logits of a few token ids through the model of a file.
    fn logits(path: &Path) -> Vec<super::super::RowOutput> {
        use super::super::{Model, ModelOptions, WeightsSource};
        let model = Model::load_with(path, &ModelOptions::default(), &WeightsSource::Heap).unwrap();
        [3, 6, 20]
            .iter()
            .map(|&n| {
                let ids: Vec<i64> = (0..n).map(|j| 101 + (j * 577) % 5000).collect();
                model.run(&ids).unwrap()
            })
            .collect()
    }

    /// A tensor moved to the external-data file: name, ONNX data type, dims, bytes there.
    type Moved = (String, i32, Vec<i64>, Range<usize>);

    /// Writes `path`'s model into `dir` as `model.onnx` + `model.onnx_data` (ONNX external
    /// data for every initializer of 1 KiB and more, after a 4 KiB gap, so that the offsets
    /// are in bounds of `model.onnx` too). Returns the new path and, for each moved tensor,
    /// its name, ONNX data type, dims and bytes in the data file.
    fn split_external(path: &Path, dir: &Path) -> (PathBuf, Vec<Moved>) {
        let mut proto = ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap();
        let mut data = vec![0u8; 4096];
        let mut moved = vec![];
        for t in &mut proto.graph.as_mut().unwrap().initializer {
            if t.raw_data.len() < 1024 {
                continue;
            }
            let entry = |key: &str, value: String| StringStringEntryProto {
                key: key.into(),
                value,
            };
            t.external_data = vec![
                entry("location", "model.onnx_data".into()),
                entry("offset", data.len().to_string()),
                entry("length", t.raw_data.len().to_string()),
            ];
            t.data_location = Some(DataLocation::External as i32);
            let at = data.len();
            data.append(&mut t.raw_data);
            moved.push((t.name.clone(), t.data_type, t.dims.clone(), at..data.len()));
        }
        let split = dir.join("model.onnx");
        std::fs::write(&split, proto.encode_to_vec()).unwrap();
        std::fs::write(dir.join("model.onnx_data"), &data).unwrap();
        (split, moved)
    }

    /// A model whose weights are in a separate file (ONNX external data, `model.onnx_data`,
    /// as exporters write big models) loads with the same weights as the single file.
    #[test]
    fn external_data_files_are_read_from_their_file() {
        let path = fixture("electra-tiny-zh/discriminator/model.onnx");
        let dir = TempDir::new("external-data");
        let (split, _) = split_external(&path, &dir);
        let decoded = decode(&split).unwrap();
        assert!(decoded.detached.is_empty());
        assert_eq!(decoded.external, vec![dir.join("model.onnx_data")]);
        assert_eq!(logits(&split), logits(&path));
    }

    /// A sidecar packed from a model with external data is not used once the data file
    /// changes, though `model.onnx` stays byte for byte the same (the fingerprint covers both).
    #[test]
    fn sidecars_follow_the_external_data_file() {
        use super::super::{pack, Model, ModelOptions, WeightsSource};
        let dir = TempDir::new("external-sidecar");
        let (split, moved) =
            split_external(&fixture("electra-tiny-zh/discriminator/model.onnx"), &dir);
        let side = dir.join("model.onnx.int8pack");
        pack(&split, &side).unwrap();
        let opts = ModelOptions::default();
        let sidecar = WeightsSource::Sidecar(side);
        let before = Model::load_with(&split, &opts, &sidecar).unwrap();
        assert!(before.weights.fused > 0);
        assert_eq!(before.weights.mapped, before.weights.fused);
        let onnx = std::fs::read(&split).unwrap();
        // new values for the middle of an int8 matmul weight (the sidecar's own check only
        // compares the first and last panels)
        let (name, _, _, bytes) = moved
            .iter()
            .find(|(name, dt, dims, bytes)| {
                name.contains("MatMul")
                    && (*dt == 2 || *dt == 3)
                    && dims.len() == 2
                    && bytes.len() >= 2048
            })
            .unwrap();
        let mut data = std::fs::read(dir.join("model.onnx_data")).unwrap();
        let mid = bytes.start + bytes.len() / 2;
        for b in &mut data[mid - 512..mid + 512] {
            *b ^= 0x55;
        }
        std::fs::write(dir.join("model.onnx_data"), &data).unwrap();
        assert_eq!(std::fs::read(&split).unwrap(), onnx);
        let after = Model::load_with(&split, &opts, &sidecar).unwrap();
        assert_eq!(after.weights.mapped, 0, "stale sidecar used for {name}");
        let heap = Model::load_with(&split, &opts, &WeightsSource::Heap).unwrap();
        let run = |m: &Model| m.run(&[101, 2769, 7305, 791, 1921, 102]).unwrap();
        assert_eq!(run(&after), run(&heap));
        assert_ne!(run(&after), run(&before), "the new weights change nothing");
    }

    /// Initializers that the graph also lists among its inputs (older exporters, and
    /// `torch.onnx.export(keep_initializers_as_inputs=True)`) are constants too, not inputs.
    #[test]
    fn initializers_listed_as_graph_inputs_are_constants() {
        use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
        use tract_onnx::pb::{type_proto, TensorShapeProto, TypeProto, ValueInfoProto};
        let path = fixture("electra-tiny-zh/discriminator/model.onnx");
        let mut proto = ModelProto::decode(&std::fs::read(&path).unwrap()[..]).unwrap();
        let g = proto.graph.as_mut().unwrap();
        let listed: Vec<ValueInfoProto> = g
            .initializer
            .iter()
            .map(|t| ValueInfoProto {
                name: t.name.clone(),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: t.data_type,
                        shape: Some(TensorShapeProto {
                            dim: t
                                .dims
                                .iter()
                                .map(|&d| Dimension {
                                    value: Some(dimension::Value::DimValue(d)),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let big = g
            .initializer
            .iter()
            .filter(|t| t.raw_data.len() >= DETACH_MIN_BYTES)
            .count();
        assert!(big > 0);
        g.input.extend(listed);
        let dir = TempDir::new("listed-inputs");
        let listed_path = dir.join("model.onnx");
        std::fs::write(&listed_path, proto.encode_to_vec()).unwrap();
        assert_eq!(decode(&listed_path).unwrap().detached.len(), big);
        assert_eq!(logits(&listed_path), logits(&path));
    }
}
