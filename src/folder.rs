//! Which ONNX file of a model folder to load when `--onnx` is not given, and where its
//! tokenizer lives.
//!
//! Layouts found in the wild, all accepted:
//! - electra-edge's own folders and optimum exports: `model.onnx` at the root;
//! - `optimum-cli onnxruntime quantize`: `model_quantized.onnx` at the root;
//! - the Hugging Face Hub's ONNX layout: `onnx/model.onnx`, `onnx/model_quantized.onnx`,
//!   `onnx/model_int8.onnx`, `onnx/model_uint8.onnx`, with `config.json` and `tokenizer.json`
//!   at the folder root.
//!
//! **Order.** Every name in [`CANDIDATES`] that exists is looked at. The first one (in that
//! order) that is an int8 graph wins; if none is, the first one present wins (an fp32 graph).
//! So an int8 file is preferred over an fp32 one whatever their names, and among several int8
//! files the order of [`CANDIDATES`] decides: the root before `onnx/`, and in `onnx/`
//! `model_quantized` (what optimum writes) before `model_int8` before `model_uint8`.
//!
//! **What "int8" means.** A graph is int8 when one of its top-level nodes is an integer
//! quantization op: `MatMulInteger`, `DynamicQuantizeLinear`, `QLinearMatMul`, `ConvInteger`,
//! `QLinearConv`, `MatMulIntegerToFloat`, `DynamicQuantizeMatMul` or `QAttention` (what
//! onnxruntime's `quantize_dynamic` and `quantize_static` write, and its saved optimized
//! graphs of them). The file name is never trusted (a `model.onnx` is int8 in
//! electra-edge's folders and fp32 in optimum's): the node list is read from the protobuf
//! itself. Reading it is cheap: the ONNX `GraphProto` stores its nodes as separate fields, and
//! the reader skips every other field (initializers, i.e. the weights) with a seek, so only the
//! node headers are read, a few hundred KB even for a large model.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The ONNX file names looked for, relative to the model folder, in order of preference
/// among int8 graphs (and among fp32 graphs when no int8 one is present).
pub const CANDIDATES: [&str; 6] = [
    "model.onnx",
    "model_quantized.onnx",
    "onnx/model_quantized.onnx",
    "onnx/model_int8.onnx",
    "onnx/model_uint8.onnx",
    "onnx/model.onnx",
];

/// Op types that make a graph "int8" (integer-quantized matmuls or convolutions).
pub const INT8_OPS: [&str; 8] = [
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QLinearMatMul",
    "ConvInteger",
    "QLinearConv",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QAttention",
];

/// The chosen ONNX file and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxChoice {
    /// Path of the chosen file (`dir` joined with one of [`CANDIDATES`]).
    pub path: PathBuf,
    /// Whether the chosen graph holds integer quantization ops.
    pub int8: bool,
    /// One line for the log: e.g. `int8 graph (MatMulInteger); also present: onnx/model.onnx (fp32)`.
    pub why: String,
}

/// Picks the ONNX file of the model folder `dir` (see the module docs for the order).
///
/// Errors when `dir` is not a folder, when none of [`CANDIDATES`] exists (the message lists
/// the names looked for), or when a candidate cannot be read or is not an ONNX model.
pub fn find_onnx(dir: &Path) -> Result<OnnxChoice> {
    if !dir.is_dir() {
        bail!(
            "model folder {} does not exist or is not a folder",
            dir.display()
        );
    }
    let mut present: Vec<(&str, Option<&'static str>)> = Vec::new();
    for name in CANDIDATES {
        let path = dir.join(name);
        if path.is_file() {
            let op = int8_op(&path).with_context(|| format!("cannot read {}", path.display()))?;
            present.push((name, op));
        }
    }
    if present.is_empty() {
        bail!(
            "no ONNX model in {}: looked for {} (pass --onnx FILE to name another file)",
            dir.display(),
            CANDIDATES.join(", ")
        );
    }
    let chosen = present.iter().position(|(_, op)| op.is_some()).unwrap_or(0);
    let (name, op) = present[chosen];
    let mut why = match op {
        Some(op) => format!("int8 graph ({op})"),
        None => "fp32 graph (no integer quantization ops)".to_string(),
    };
    let others: Vec<String> = present
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != chosen)
        .map(|(_, (n, op))| format!("{n} ({})", if op.is_some() { "int8" } else { "fp32" }))
        .collect();
    if others.is_empty() {
        why.push_str(", the only candidate");
    } else {
        why.push_str(&format!("; also present: {}", others.join(", ")));
    }
    Ok(OnnxChoice {
        path: dir.join(name),
        int8: op.is_some(),
        why,
    })
}

/// The folder holding the tokenizer for the graph `onnx` of the model folder `dir`: `dir`
/// itself when it has `tokenizer.json` or `vocab.txt` (the Hub layout keeps them at the root
/// while the graph is under `onnx/`), else the graph's own folder when that has one, else
/// `dir` (whose loader then reports what is missing).
pub fn tokenizer_dir(dir: &Path, onnx: &Path) -> PathBuf {
    let has = |d: &Path| d.join("tokenizer.json").is_file() || d.join("vocab.txt").is_file();
    if has(dir) {
        return dir.to_path_buf();
    }
    match onnx.parent() {
        Some(p) if has(p) => p.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The first op type of [`INT8_OPS`] among the top-level nodes of the ONNX file, if any.
/// Errors when the file is not a well-formed ONNX `ModelProto` (as far as the walk goes).
pub fn int8_op(path: &Path) -> Result<Option<&'static str>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut found = None;
    let mut saw_graph = false;
    // ModelProto: field 7 = graph (GraphProto); GraphProto: field 1 = node (NodeProto);
    // NodeProto: field 4 = op_type (string).
    let mut pos = 0u64;
    while pos < len {
        let (field, wire) = read_key(&mut r, &mut pos)?;
        if field == 7 && wire == 2 {
            let glen = read_varint(&mut r, &mut pos)?;
            let gend = end_of(pos, glen, len)?;
            saw_graph = true;
            while pos < gend {
                let (gfield, gwire) = read_key(&mut r, &mut pos)?;
                if gfield == 1 && gwire == 2 {
                    let nlen = read_varint(&mut r, &mut pos)?;
                    let nend = end_of(pos, nlen, gend)?;
                    while pos < nend {
                        let (nfield, nwire) = read_key(&mut r, &mut pos)?;
                        if nfield == 4 && nwire == 2 && found.is_none() {
                            let slen = read_varint(&mut r, &mut pos)?;
                            end_of(pos, slen, nend)?;
                            if slen <= 64 {
                                let mut buf = vec![0u8; slen as usize];
                                r.read_exact(&mut buf)?;
                                pos += slen;
                                found = INT8_OPS.iter().copied().find(|op| op.as_bytes() == buf);
                            } else {
                                skip(&mut r, &mut pos, slen)?;
                            }
                        } else {
                            skip_field(&mut r, &mut pos, nwire, nend)?;
                        }
                    }
                    if pos != nend {
                        bail!("malformed ONNX node");
                    }
                } else {
                    skip_field(&mut r, &mut pos, gwire, gend)?;
                }
            }
            if pos != gend {
                bail!("malformed ONNX graph");
            }
        } else {
            skip_field(&mut r, &mut pos, wire, len)?;
        }
    }
    if !saw_graph {
        bail!("not an ONNX model (no graph)");
    }
    Ok(found)
}

fn end_of(pos: u64, n: u64, limit: u64) -> Result<u64> {
    match pos.checked_add(n) {
        Some(end) if end <= limit => Ok(end),
        _ => bail!("not an ONNX model (a field runs past its end)"),
    }
}

fn read_byte<R: Read>(r: &mut R, pos: &mut u64) -> Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)
        .context("not an ONNX model (truncated)")?;
    *pos += 1;
    Ok(b[0])
}

fn read_varint<R: Read>(r: &mut R, pos: &mut u64) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = read_byte(r, pos)?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("not an ONNX model (bad varint)")
}

fn read_key<R: Read>(r: &mut R, pos: &mut u64) -> Result<(u64, u8)> {
    let key = read_varint(r, pos)?;
    let field = key >> 3;
    if field == 0 {
        bail!("not an ONNX model (field number 0)");
    }
    Ok((field, (key & 7) as u8))
}

fn skip<R: Seek>(r: &mut BufReader<R>, pos: &mut u64, n: u64) -> Result<()> {
    let n_i64 = i64::try_from(n).context("not an ONNX model (field too long)")?;
    r.seek_relative(n_i64)?;
    *pos += n;
    Ok(())
}

fn skip_field<R: Read + Seek>(
    r: &mut BufReader<R>,
    pos: &mut u64,
    wire: u8,
    limit: u64,
) -> Result<()> {
    match wire {
        0 => {
            read_varint(r, pos)?;
        }
        1 => {
            end_of(*pos, 8, limit)?;
            skip(r, pos, 8)?;
        }
        2 => {
            let n = read_varint(r, pos)?;
            end_of(*pos, n, limit)?;
            skip(r, pos, n)?;
        }
        5 => {
            end_of(*pos, 4, limit)?;
            skip(r, pos, 4)?;
        }
        _ => bail!("not an ONNX model (wire type {wire})"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder removed on drop (also when a test panics).
    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!(
                "ee-folder-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// A minimal ModelProto: ir_version, a graph with the given node op types (each node with
    /// an input, an output and a name around op_type) and one big initializer, an opset.
    fn onnx_bytes(ops: &[&str]) -> Vec<u8> {
        let mut graph = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let mut node = Vec::new();
            field_bytes(1, format!("in{i}").as_bytes(), &mut node);
            field_bytes(2, format!("out{i}").as_bytes(), &mut node);
            field_bytes(3, format!("node{i}").as_bytes(), &mut node);
            field_bytes(4, op.as_bytes(), &mut node);
            field_bytes(1, &node, &mut graph);
        }
        field_bytes(2, b"g", &mut graph);
        // an initializer (TensorProto) whose raw bytes spell an int8 op name: must be skipped
        let mut tensor = Vec::new();
        varint(1 << 3, &mut tensor);
        varint(1000, &mut tensor);
        let mut raw = b"MatMulInteger".repeat(100);
        raw.extend(vec![0u8; 100_000]);
        field_bytes(9, &raw, &mut tensor);
        field_bytes(5, &tensor, &mut graph);
        let mut model = Vec::new();
        varint(1 << 3, &mut model); // ir_version = 8
        varint(8, &mut model);
        field_bytes(2, b"pytorch", &mut model);
        field_bytes(7, &graph, &mut model);
        let mut opset = Vec::new();
        varint(2 << 3, &mut opset);
        varint(17, &mut opset);
        field_bytes(8, &opset, &mut model);
        model
    }

    const FP32: &[&str] = &["Gather", "MatMul", "Add", "Softmax"];
    const INT8: &[&str] = &["Gather", "DynamicQuantizeLinear", "MatMulInteger", "Cast"];

    fn write(dir: &Path, name: &str, ops: &[&str]) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, onnx_bytes(ops)).unwrap();
    }

    fn chosen(dir: &Path) -> String {
        let c = find_onnx(dir).unwrap();
        c.path
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/")
    }

    #[test]
    fn int8_is_read_from_the_nodes_not_the_weights() {
        let t = Tmp::new("ops");
        write(&t.0, "a.onnx", INT8);
        write(&t.0, "b.onnx", FP32);
        assert_eq!(
            int8_op(&t.0.join("a.onnx")).unwrap(),
            Some("DynamicQuantizeLinear")
        );
        // b's initializer bytes contain "MatMulInteger", but no node is one
        assert_eq!(int8_op(&t.0.join("b.onnx")).unwrap(), None);
        // onnxruntime's saved optimized int8 graphs may have no plain quantization op left
        write(
            &t.0,
            "c.onnx",
            &["Gather", "DynamicQuantizeMatMul", "QAttention"],
        );
        assert_eq!(
            int8_op(&t.0.join("c.onnx")).unwrap(),
            Some("DynamicQuantizeMatMul")
        );
    }

    #[test]
    fn each_layout_alone_is_found() {
        for name in CANDIDATES {
            for ops in [FP32, INT8] {
                let t = Tmp::new("alone");
                write(&t.0, name, ops);
                let c = find_onnx(&t.0).unwrap();
                assert_eq!(c.path, t.0.join(name));
                assert_eq!(c.int8, ops == INT8, "{name}");
                assert!(c.why.ends_with("the only candidate"), "{}", c.why);
            }
        }
    }

    #[test]
    fn int8_is_preferred_over_fp32_whatever_the_names() {
        // optimum: fp32 model.onnx + quantized model_quantized.onnx
        let t = Tmp::new("optimum");
        write(&t.0, "model.onnx", FP32);
        write(&t.0, "model_quantized.onnx", INT8);
        assert_eq!(chosen(&t.0), "model_quantized.onnx");
        let c = find_onnx(&t.0).unwrap();
        assert_eq!(
            c.why,
            "int8 graph (DynamicQuantizeLinear); also present: model.onnx (fp32)"
        );

        // the Hub: onnx/ with fp32 and three quantized files, tokenizer at the root
        let t = Tmp::new("hub");
        write(&t.0, "onnx/model.onnx", FP32);
        write(&t.0, "onnx/model_uint8.onnx", INT8);
        assert_eq!(chosen(&t.0), "onnx/model_uint8.onnx");
        write(&t.0, "onnx/model_int8.onnx", INT8);
        assert_eq!(chosen(&t.0), "onnx/model_int8.onnx");
        write(&t.0, "onnx/model_quantized.onnx", INT8);
        assert_eq!(chosen(&t.0), "onnx/model_quantized.onnx");

        // electra-edge's folder: int8 model.onnx beats everything
        write(&t.0, "model.onnx", INT8);
        assert_eq!(chosen(&t.0), "model.onnx");
        // ... but an fp32 model.onnx loses to an int8 file under onnx/
        write(&t.0, "model.onnx", FP32);
        assert_eq!(chosen(&t.0), "onnx/model_quantized.onnx");
    }

    #[test]
    fn only_fp32_files_take_the_first_in_order() {
        let t = Tmp::new("fp32");
        write(&t.0, "onnx/model.onnx", FP32);
        write(&t.0, "model.onnx", FP32);
        assert_eq!(chosen(&t.0), "model.onnx");
        let c = find_onnx(&t.0).unwrap();
        assert!(!c.int8);
        assert!(c.why.starts_with("fp32 graph"), "{}", c.why);
    }

    #[test]
    fn an_empty_folder_names_what_was_looked_for() {
        let t = Tmp::new("empty");
        std::fs::write(t.0.join("model.fp32.onnx"), onnx_bytes(FP32)).unwrap();
        let e = find_onnx(&t.0).unwrap_err().to_string();
        for name in CANDIDATES {
            assert!(e.contains(name), "{e}");
        }
        assert!(e.contains("--onnx"), "{e}");
        let e = find_onnx(&t.0.join("missing")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        let t = Tmp::new("broken");
        let good = onnx_bytes(INT8);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("text", b"hello world, not protobuf".to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("huge length", vec![0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            (
                "bad varint",
                vec![0x08; 1].into_iter().chain([0xff; 11]).collect(),
            ),
        ];
        for (what, bytes) in cases {
            std::fs::write(t.0.join("model.onnx"), &bytes).unwrap();
            let e = find_onnx(&t.0).unwrap_err();
            assert!(format!("{e:#}").contains("model.onnx"), "{what}: {e:#}");
        }
    }

    #[test]
    fn tokenizer_at_the_root_or_beside_the_graph() {
        let t = Tmp::new("tok");
        write(&t.0, "onnx/model.onnx", FP32);
        let onnx = t.0.join("onnx/model.onnx");
        assert_eq!(tokenizer_dir(&t.0, &onnx), t.0);
        std::fs::write(t.0.join("onnx/tokenizer.json"), "{}").unwrap();
        assert_eq!(tokenizer_dir(&t.0, &onnx), t.0.join("onnx"));
        std::fs::write(t.0.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(tokenizer_dir(&t.0, &onnx), t.0);
    }

    #[test]
    fn real_exports_are_recognised() {
        // the committed demo folder (int8) and, when present beside the repo, an fp32 fixture
        let demo = crate::testutil::demo_models().join("discriminator/model.onnx");
        assert_eq!(int8_op(&demo).unwrap(), Some("DynamicQuantizeLinear"));
        let fp32 = crate::testutil::fixture("electra-tiny-zh/discriminator/model.fp32.onnx");
        assert_eq!(int8_op(&fp32).unwrap(), None);
        assert!(int8_op(&crate::testutil::fixture("minilm-l6/model.onnx"))
            .unwrap()
            .is_some());
    }
}
