//! The expansions run by tract against references written out here, and their errors.

use super::builder::{float_attr, int_attr, ints_attr};
use super::*;
use crate::model::test_protos::{one_node_model, value_info};
use tract_onnx::pb::{
    tensor_proto::DataType, AttributeProto, GraphProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};
use tract_onnx::prelude::*;

const S: usize = 5;
const IN: usize = 8;
const HEADS: usize = 2;
const HID: usize = 8;

fn tensor(name: &str, dims: &[usize], dt: DataType, vals: &[f32]) -> TensorProto {
    let mut t = TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt as i32,
        ..Default::default()
    };
    match dt {
        DataType::Float => t.float_data = vals.to_vec(),
        _ => t.int32_data = vals.iter().map(|&v| v as i32).collect(),
    }
    t
}

/// Deterministic values in about [-1, 1].
fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed * 11) % 23) as f32 - 11.0) / 11.0)
        .collect()
}

/// One contrib node between graph inputs and output `y` `[1, S, HID]`; expanded, then
/// run by tract (with our transformer ops installed when `ops`).
fn run(
    node: NodeProto,
    inputs: Vec<(ValueInfoProto, Tensor)>,
    inits: Vec<TensorProto>,
    ops: bool,
) -> Result<(Vec<f32>, usize)> {
    let input_infos: Vec<ValueInfoProto> = inputs.iter().map(|(v, _)| v.clone()).collect();
    let mut model = model_of(node, input_infos, inits);
    assert_eq!(expand_contrib_ops(&mut model, &[])?, 1);
    assert!(model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .all(|n| n.domain.is_empty()));
    let mut typed = tract_onnx::onnx()
        .model_for_proto_model(&model)?
        .into_typed()?;
    let mut fused = 0;
    if ops {
        fused = crate::ops::fuse_transformer_ops(&mut typed, &Default::default())?.attention;
    }
    let plan = typed.into_optimized()?.into_runnable()?;
    let out = plan.run(inputs.into_iter().map(|(_, t)| t.into_tvalue()).collect())?;
    let y = out[0].to_plain_array_view::<f32>()?;
    Ok((y.iter().copied().collect(), fused))
}

/// A one-node model with output `y` `[1, S, HID]`, onnxruntime's domain imported.
fn model_of(node: NodeProto, inputs: Vec<ValueInfoProto>, inits: Vec<TensorProto>) -> ModelProto {
    let y = value_info("y", DataType::Float, &[1, S, HID]);
    let mut model = one_node_model(node, inputs, inits, y);
    model.opset_import.push(OperatorSetIdProto {
        domain: MS.into(),
        version: 1,
    });
    model
}

/// The loader leaves big initializers out of the decoded model and passes their names
/// and dims (`decode::thin_model`): the expansion is the same as with them in the graph.
#[test]
fn detached_weights_expand_like_present_ones() {
    let (x, w, b) = (vals(S * IN, 1), vals(IN * 3 * HID, 2), vals(3 * HID, 3));
    let w = tensor("w", &[IN, 3 * HID], DataType::Float, &w);
    let b = tensor("b", &[3 * HID], DataType::Float, &b);
    let model = |inits: Vec<TensorProto>| {
        let node = attention_node("Attention", &["x", "w", "b"], vec![]);
        model_of(node, vec![x_input(&x).0], inits)
    };
    let mut present = model(vec![w, b.clone()]);
    assert_eq!(expand_contrib_ops(&mut present, &[]).unwrap(), 1);
    let mut detached = model(vec![b.clone()]);
    let known = [("w", vec![IN as i64, 3 * HID as i64])];
    assert_eq!(expand_contrib_ops(&mut detached, &known).unwrap(), 1);
    let (p, d) = (present.graph.unwrap(), detached.graph.unwrap());
    assert_eq!(p.node, d.node);
    assert_eq!(&p.initializer[1..], &d.initializer[..]);
    // without the dims the weights are unknown
    let msg = format!(
        "{:#}",
        expand_contrib_ops(&mut model(vec![b]), &[]).unwrap_err()
    );
    assert!(msg.contains("not a constant of the graph"), "{msg}");
}

/// onnxruntime's Attention, by the book: x W + b, per head softmax(Q K^T / sqrt(d) +
/// (keep ? 0 : -10000)) V.
fn reference(x: &[f32], w: &[f32], b: &[f32], keep: &[bool]) -> Vec<f32> {
    let d = HID / HEADS;
    let mut qkv = vec![0f32; S * 3 * HID];
    for s in 0..S {
        for j in 0..3 * HID {
            qkv[s * 3 * HID + j] = b[j]
                + (0..IN)
                    .map(|k| x[s * IN + k] * w[k * 3 * HID + j])
                    .sum::<f32>();
        }
    }
    let at = |s: usize, part: usize, h: usize, i: usize| qkv[s * 3 * HID + part * HID + h * d + i];
    let mut y = vec![0f32; S * HID];
    for h in 0..HEADS {
        for sq in 0..S {
            let scores: Vec<f32> = (0..S)
                .map(|sk| {
                    let dot: f32 = (0..d).map(|i| at(sq, 0, h, i) * at(sk, 1, h, i)).sum();
                    dot / (d as f32).sqrt() + if keep[sk] { 0.0 } else { -10000.0 }
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for i in 0..d {
                y[sq * HID + h * d + i] =
                    (0..S).map(|sk| e[sk] / sum * at(sk, 2, h, i)).sum::<f32>();
            }
        }
    }
    y
}

fn attention_node(op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: "attn_0".into(),
        op_type: op.into(),
        domain: MS.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec!["y".into()],
        attribute: [vec![int_attr("num_heads", HEADS as i64)], attrs].concat(),
        ..Default::default()
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn x_input(x: &[f32]) -> (ValueInfoProto, Tensor) {
    (
        value_info("x", DataType::Float, &[1, S, IN]),
        Tensor::from_shape(&[1, S, IN], x).unwrap(),
    )
}

#[test]
fn attention_matches_the_reference_with_every_mask_form() {
    let (x, w, b) = (vals(S * IN, 1), vals(IN * 3 * HID, 2), vals(3 * HID, 3));
    let inits = || {
        vec![
            tensor("w", &[IN, 3 * HID], DataType::Float, &w),
            tensor("b", &[3 * HID], DataType::Float, &b),
        ]
    };
    let all = [true; S];
    let three = [true, true, true, false, false];
    let mask2 = |m: &[bool]| {
        let v: Vec<i32> = m.iter().map(|&k| k as i32).collect();
        (
            value_info("mask", DataType::Int32, &[1, S]),
            Tensor::from_shape(&[1, S], &v).unwrap(),
        )
    };
    let len1 = (
        value_info("mask", DataType::Int32, &[1]),
        Tensor::from_shape(&[1], &[3i32]).unwrap(),
    );
    type Case<'a> = (
        &'a str,
        Vec<&'a str>,
        Vec<(ValueInfoProto, Tensor)>,
        &'a [bool],
    );
    let cases: Vec<Case> = vec![
        ("no mask", vec!["x", "w", "b"], vec![x_input(&x)], &all),
        (
            "2-D ones",
            vec!["x", "w", "b", "mask"],
            vec![x_input(&x), mask2(&all)],
            &all,
        ),
        (
            "2-D 3 of 5",
            vec!["x", "w", "b", "mask"],
            vec![x_input(&x), mask2(&three)],
            &three,
        ),
        (
            "1-D length 3",
            vec!["x", "w", "b", "mask"],
            vec![x_input(&x), len1],
            &three,
        ),
    ];
    for (what, ins, inputs, keep) in cases {
        let want = reference(&x, &w, &b, keep);
        for ops in [false, true] {
            let node = attention_node("Attention", &ins, vec![]);
            let (got, fused) = run(node, inputs.clone(), inits(), ops).unwrap();
            let err = max_diff(&got, &want);
            eprintln!("{what}, our ops {ops}: max |tract - reference| = {err:e}");
            assert!(err < 1e-5, "{what} (ops {ops}): {err}");
            // our attention op takes the expanded subgraph
            assert_eq!(fused, ops as usize, "{what}");
        }
    }
}

#[test]
fn qattention_is_attention_on_dequantized_input_and_weights() {
    // u8 input with zero point 128, i8 weights with zero point 0
    let xq: Vec<u8> = (0..S * IN).map(|i| ((i * 53) % 256) as u8).collect();
    let wq: Vec<i8> = (0..IN * 3 * HID).map(|i| ((i * 29) % 255) as i8).collect();
    let (xs, ws) = (0.01f32, 0.02f32);
    let b = vals(3 * HID, 3);
    let x: Vec<f32> = xq.iter().map(|&q| (q as f32 - 128.0) * xs).collect();
    let w: Vec<f32> = wq.iter().map(|&q| q as f32 * ws).collect();
    let raw = |name: &str, dims: &[usize], dt: DataType, bytes: Vec<u8>| TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt as i32,
        raw_data: bytes,
        ..Default::default()
    };
    let inits = vec![
        raw(
            "wq",
            &[IN, 3 * HID],
            DataType::Int8,
            wq.iter().map(|&v| v as u8).collect(),
        ),
        tensor("b", &[3 * HID], DataType::Float, &b),
        tensor("xs", &[], DataType::Float, &[xs]),
        tensor("ws", &[], DataType::Float, &[ws]),
        raw("xzp", &[], DataType::Uint8, vec![128]),
        raw("wzp", &[], DataType::Int8, vec![0]),
    ];
    let input = (
        value_info("xq", DataType::Uint8, &[1, S, IN]),
        Tensor::from_shape(&[1, S, IN], &xq).unwrap(),
    );
    let node = attention_node(
        "QAttention",
        &["xq", "wq", "b", "xs", "ws", "", "xzp", "wzp"],
        vec![],
    );
    let (got, _) = run(node, vec![input], inits, true).unwrap();
    let err = max_diff(&got, &reference(&x, &w, &b, &[true; S]));
    eprintln!("QAttention: max |tract - reference| = {err:e}");
    assert!(err < 1e-4, "{err}");
}

/// `FusedMatMul` with `transA`, `transB` and `alpha` (ranks from the graph inputs) against
/// a plain product; and one error when a transposed operand's rank is unknown.
#[test]
fn fused_matmul_transposes_and_scales() {
    let (m, k, n) = (3, 4, 5);
    let (a, b) = (vals(2 * k * m, 4), vals(2 * n * k, 5));
    let alpha = 0.375f32;
    let node = |b_rank_known: bool| NodeProto {
        name: "fmm".into(),
        op_type: "FusedMatMul".into(),
        domain: MS.into(),
        input: vec!["a".into(), if b_rank_known { "b" } else { "b2" }.into()],
        output: vec!["y".into()],
        attribute: vec![
            int_attr("transA", 1),
            int_attr("transB", 1),
            float_attr("alpha", alpha),
        ],
        ..Default::default()
    };
    // a [2, k, m], b [2, n, k]: y [2, m, n] = alpha * a^T b^T
    let mut want = vec![0f32; 2 * m * n];
    for bt in 0..2 {
        for i in 0..m {
            for j in 0..n {
                want[(bt * m + i) * n + j] = alpha
                    * (0..k)
                        .map(|kk| a[(bt * k + kk) * m + i] * b[(bt * n + j) * k + kk])
                        .sum::<f32>();
            }
        }
    }
    let inputs = vec![
        (
            value_info("a", DataType::Float, &[2, k, m]),
            Tensor::from_shape(&[2, k, m], &a).unwrap(),
        ),
        (
            value_info("b", DataType::Float, &[2, n, k]),
            Tensor::from_shape(&[2, n, k], &b).unwrap(),
        ),
    ];
    let mut model = one_node_model(
        node(true),
        inputs.iter().map(|(v, _)| v.clone()).collect(),
        vec![],
        value_info("y", DataType::Float, &[2, m, n]),
    );
    let mut unknown = model.clone();
    expand_contrib_ops(&mut model, &[]).unwrap();
    let plan = tract_onnx::onnx()
        .model_for_proto_model(&model)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let out = plan
        .run(inputs.into_iter().map(|(_, t)| t.into_tvalue()).collect())
        .unwrap();
    let got: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert!(max_diff(&got, &want) < 1e-5, "{got:?} vs {want:?}");

    unknown.graph.as_mut().unwrap().node = vec![node(false)];
    let msg = format!("{:#}", expand_contrib_ops(&mut unknown, &[]).unwrap_err());
    assert!(msg.contains("fmm") && msg.contains("transB"), "{msg}");
}

/// Two contrib nodes with the same name expand to distinct node and tensor names.
#[test]
fn same_named_nodes_expand_to_distinct_names() {
    let gelu = |i: &str, o: &str| NodeProto {
        name: "Gelu".into(),
        op_type: "Gelu".into(),
        domain: MS.into(),
        input: vec![i.into()],
        output: vec![o.into()],
        ..Default::default()
    };
    let mut model = ModelProto {
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            node: vec![gelu("x", "h"), gelu("h", "y")],
            output: vec![value_info("y", DataType::Float, &[2])],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(expand_contrib_ops(&mut model, &[]).unwrap(), 2);
    let g = model.graph.unwrap();
    let mut names = HashSet::new();
    for n in &g.node {
        assert!(names.insert(n.name.clone()), "{}", n.name);
        for o in &n.output {
            assert!(names.insert(o.clone()), "{o}");
        }
    }
}

#[test]
fn unsupported_variants_are_one_error_naming_the_node() {
    let w = vals(IN * 3 * HID, 2);
    let inits = vec![tensor("w", &[IN, 3 * HID], DataType::Float, &w)];
    for (attrs, ins, word) in [
        (
            vec![int_attr("unidirectional", 1)],
            vec!["x", "w"],
            "unidirectional",
        ),
        (
            vec![ints_attr("qkv_hidden_sizes", &[8, 8, 4])],
            vec!["x", "w"],
            "qkv_hidden_sizes",
        ),
        (vec![], vec!["x", "w", "", "", "past"], "past"),
    ] {
        let node = attention_node("Attention", &ins, attrs);
        let err = run(node, vec![x_input(&vals(S * IN, 1))], inits.clone(), false)
            .map(|_| ())
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("attn_0") && msg.contains("Attention"), "{msg}");
        assert!(msg.contains(word) && !msg.contains('\n'), "{msg}");
    }
}
