//! Graphs we cannot run end in one error line naming the op and node, never a panic
//! (issue 9 item 4, issue 11 item 3). The graphs are built here, in memory: an op nobody
//! knows, and onnxruntime's fused `com.microsoft:Attention` (what `optimum-cli onnxruntime
//! optimize -O2` writes for BERT-style attention; tract-onnx 0.23.9 alone panics typing it),
//! which now loads (`model::contrib` expands it), and its unsupported `unidirectional`
//! variant, which does not.

mod common;

use std::process::{Command, Stdio};

use common::{fixtures, TempDir};
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
