//! Graphs we cannot run end in one error line naming the op and node, never a panic. The
//! graphs are built here, in memory: an op nobody knows, and onnxruntime's fused
//! `com.microsoft:Attention` (what `optimum-cli onnxruntime optimize -O2` writes for
//! BERT-style attention; tract-onnx 0.23.9 alone panics typing it), which now loads
//! (`model::contrib` expands it), and its unsupported `unidirectional` variant, which does not.
//!
//! A model whose embedding table is smaller than what the folder looks up in it (a corrupted
//! header that shrinks the word-embedding table, which made every request panic in tract's
//! `Gather`) is refused at load with the table's size and what it needed: real corrupted copies
//! of the demo discriminator, rewritten here through the ONNX protobuf.

mod common;

use std::process::{Command, Stdio};

use common::{copy_folder, demo_models, fixtures, TempDir};
use electra_edge::engine::{Engine, EngineOptions};
use electra_edge::model::{Model, ModelOptions};
use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                None => tensor_shape_proto::dimension::Value::DimParam("S".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn floats(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: (0..n)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 40.0)
            .collect(),
        ..Default::default()
    }
}

/// `input_ids [1, S] -> Gather(embeddings) -> x [1, S, 8] -> node(x, extra...) -> y`.
fn graph_with(node: NodeProto, extra: Vec<TensorProto>) -> Vec<u8> {
    let mut initializer = vec![floats("emb", &[64, 8])];
    initializer.extend(extra);
    let gather = NodeProto {
        name: "embed".into(),
        op_type: "Gather".into(),
        input: vec!["emb".into(), "input_ids".into()],
        output: vec!["x".into()],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            },
            OperatorSetIdProto {
                domain: "com.microsoft".into(),
                version: 1,
            },
        ],
        graph: Some(GraphProto {
            name: "g".into(),
            node: vec![gather, node],
            initializer,
            input: vec![value_info("input_ids", DataType::Int64, &[Some(1), None])],
            output: vec![value_info("y", DataType::Float, &[Some(1), None, Some(8)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

fn unknown_op() -> Vec<u8> {
    graph_with(
        NodeProto {
            name: "mystery_node".into(),
            op_type: "NoSuchOp".into(),
            domain: "com.example".into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            ..Default::default()
        },
        vec![],
    )
}

/// onnxruntime's fused attention: `Attention(x, qkv weights [8, 24], qkv bias [24])`, with
/// `unidirectional` (causal) when asked.
fn ms_attention(unidirectional: bool) -> Vec<u8> {
    let mut attribute = vec![AttributeProto {
        name: "num_heads".into(),
        r#type: AttributeType::Int as i32,
        i: 2,
        ..Default::default()
    }];
    if unidirectional {
        attribute.push(AttributeProto {
            name: "unidirectional".into(),
            r#type: AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        });
    }
    graph_with(
        NodeProto {
            name: "attn_0".into(),
            op_type: "Attention".into(),
            domain: "com.microsoft".into(),
            input: vec!["x".into(), "qkv_w".into(), "qkv_b".into()],
            output: vec!["y".into()],
            attribute,
            ..Default::default()
        },
        vec![floats("qkv_w", &[8, 24]), floats("qkv_b", &[24])],
    )
}

fn load_error(bytes: &[u8], tag: &str) -> String {
    let dir = TempDir::new(tag);
    let path = dir.join("model.onnx");
    std::fs::write(&path, bytes).unwrap();
    match Model::load(&path, &ModelOptions::default()) {
        Ok(_) => panic!("{tag}: loaded a graph tract cannot run"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unknown_op_is_one_clear_error() {
    let msg = load_error(&unknown_op(), "unknown-op");
    eprintln!("{msg}");
    assert!(msg.contains("mystery_node"), "{msg}");
    assert!(msg.contains("NoSuchOp"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

/// (its values are checked against a reference in `model::contrib`'s unit tests)
#[test]
fn onnxruntime_fused_attention_loads_and_runs() {
    let dir = TempDir::new("ms-attention");
    let path = dir.join("model.onnx");
    std::fs::write(&path, ms_attention(false)).unwrap();
    let model = Model::load(&path, &ModelOptions::default()).unwrap();
    let out = model.run(&[1, 5, 9, 2]).unwrap();
    assert_eq!(out.shape, [4, 8]);
    assert!(out.data.iter().all(|v| v.is_finite()));
}

#[test]
fn unsupported_attention_variant_is_one_clear_error() {
    let msg = load_error(&ms_attention(true), "ms-attention-causal");
    eprintln!("{msg}");
    assert!(msg.contains("attn_0"), "{msg}");
    assert!(msg.contains("Attention"), "{msg}");
    assert!(msg.contains("unidirectional"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

/// The command line: exit status 1 and exactly one line on stderr, naming the node.
#[test]
fn run_exits_1_with_one_line() {
    let tagger = fixtures().join("electra-tiny-zh/tagger");
    for (tag, bytes, node) in [
        ("cli-unknown", unknown_op(), "mystery_node"),
        ("cli-attention", ms_attention(true), "attn_0"),
    ] {
        let dir = TempDir::new(tag);
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(tagger.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("model.onnx"), bytes).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_electra-edge"))
            .args(["run", "--model"])
            .arg(dir.path())
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tag}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{tag}: {stderr}");
        assert!(lines[0].contains(node), "{tag}: {stderr}");
        assert!(!stderr.contains("RUST_BACKTRACE"), "{tag}: {stderr}");
    }
}

/// The demo discriminator's folder, copied, its `model.onnx` with the first dimension of one
/// embedding table rewritten to `rows`: the table `Gather`ed with the graph input `indices`
/// (`input_ids`, `token_type_ids`), or with indices computed in the graph (positions) when
/// `None`. With `cut`, the table's data is cut to the new shape too (a whole, smaller table,
/// which tract loads); without, only the header changes.
fn shrunk_table(indices: Option<&str>, rows: i64, cut: bool) -> TempDir {
    let from = demo_models().join("discriminator");
    let dir = TempDir::new("shrunk-table");
    copy_folder(&from, dir.path());
    let bytes = std::fs::read(from.join("model.onnx")).unwrap();
    let mut model = ModelProto::decode(&bytes[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let tables: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Gather" && initializers.contains(&n.input[0].as_str()))
        .filter(|n| match indices {
            Some(name) => n.input[1] == name,
            None => !inputs.contains(&n.input[1]),
        })
        .map(|n| n.input[0].clone())
        .collect();
    assert_eq!(tables.len(), 1, "{indices:?}: {tables:?}");
    let table = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == tables[0])
        .unwrap();
    assert_eq!(table.dims.len(), 2);
    assert!(!table.raw_data.is_empty() && rows < table.dims[0]);
    if cut {
        let row_bytes = table.raw_data.len() / table.dims[0] as usize;
        table.raw_data.truncate(rows as usize * row_bytes);
    }
    table.dims[0] = rows;
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
    dir
}

/// Token ids the demo's tokenizer has, read from its tokenizer.json: the highest id of its
/// vocabulary and added tokens, plus one.
fn demo_vocabulary() -> usize {
    let path = demo_models().join("discriminator/tokenizer.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap().values();
    let added = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"]);
    vocab
        .chain(added)
        .map(|id| id.as_u64().unwrap())
        .max()
        .unwrap() as usize
        + 1
}

fn load_demo_copy(dir: &TempDir, window_tokens: Option<usize>) -> anyhow::Result<Engine> {
    let options = EngineOptions {
        window_tokens,
        ..EngineOptions::default()
    };
    Engine::load(dir.path(), options)
}

#[test]
fn a_word_table_smaller_than_the_vocabulary_is_refused_at_load() {
    let vocabulary = demo_vocabulary();
    let rows = vocabulary as i64 / 2;
    let ours = format!(
        "the word embedding table has {rows} rows but the tokenizer's vocabulary has \
         {vocabulary} tokens"
    );
    // a smaller table that is whole loads in tract: our check refuses it; a header alone
    // changed (the data still holds every row) tract refuses itself
    for (cut, want) in [(true, ours.as_str()), (false, "does not match shape")] {
        let dir = shrunk_table(Some("input_ids"), rows, cut);
        let msg = format!("{:#}", load_demo_copy(&dir, None).err().unwrap());
        eprintln!("{msg}");
        assert!(msg.contains(want), "cut {cut}: {msg}");
        assert!(
            msg.contains(&dir.join("model.onnx").display().to_string()),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    // what the check prevents: the graph alone loads, and a token id past the table's end fails
    // the request (tract's Gather panics)
    let dir = shrunk_table(Some("input_ids"), rows, true);
    let model = Model::load(&dir.join("model.onnx"), &ModelOptions::default()).unwrap();
    assert_eq!(model.embedding_tables().word, Some(rows as usize));
    let last = vocabulary as i64 - 1;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(&[2, last, 3])));
    assert!(
        !matches!(run, Ok(Ok(_))),
        "a row past the table was looked up"
    );
}

/// From the command line: exit status 1 and one line naming the table and the vocabulary.
#[test]
fn run_refuses_a_shrunk_word_table_in_one_line() {
    let vocabulary = demo_vocabulary();
    let dir = shrunk_table(Some("input_ids"), 1000, true);
    let out = Command::new(env!("CARGO_BIN_EXE_electra-edge"))
        .args(["run", "--json", "--model"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let want = format!(
        "word embedding table has 1000 rows but the tokenizer's vocabulary has {vocabulary}"
    );
    assert!(stderr.contains(&want), "{stderr}");
}

/// The position table against the window, the token type table against type id 0; the
/// unmodified copy loads, and a window that fits a smaller position table loads too.
#[test]
fn position_and_token_type_tables_are_checked_too() {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(demo_models().join("discriminator/config.json")).unwrap(),
    )
    .unwrap();
    let positions = config["max_position_embeddings"].as_u64().unwrap() as usize;
    let dir = shrunk_table(None, 100, true);
    let msg = format!("{:#}", load_demo_copy(&dir, None).err().unwrap());
    let want = format!(
        "the position embedding table has 100 rows but windows are {positions} tokens long"
    );
    assert!(msg.contains(&want), "{msg}");
    let engine = load_demo_copy(&dir, Some(100)).unwrap();
    assert_eq!(engine.model.embedding_tables().position, Some(100));
    engine
        .answer("我们今天去学校。", &engine.options.defaults)
        .unwrap();

    let dir = shrunk_table(Some("token_type_ids"), 0, true);
    let msg = format!("{:#}", load_demo_copy(&dir, None).err().unwrap());
    assert!(
        msg.contains("the token type embedding table has 0 rows but token type id 0 is used"),
        "{msg}"
    );

    let good = TempDir::new("good-demo");
    copy_folder(&demo_models().join("discriminator"), good.path());
    let engine = load_demo_copy(&good, None).unwrap();
    let tables = engine.model.embedding_tables();
    assert!(tables.word.unwrap() >= demo_vocabulary(), "{tables:?}");
    let types = config["type_vocab_size"].as_u64().unwrap() as usize;
    assert_eq!(
        (tables.position, tables.token_type),
        (Some(positions), Some(types))
    );
}
