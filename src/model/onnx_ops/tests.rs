//! Our parsers against tract-onnx's: the same typed graphs, or (LayerNorm as our op) the
//! same values.

use super::*;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use crate::ops::AddLayerNorm;

use crate::model::test_protos::{one_node_model, value_info as info};
use crate::testutil::fixture;

/// tract-onnx's parse and typing of a model (inputs `[1, S]`, as the loader binds them),
/// with our parsers when `ours` (`Some(our_ops)`).
fn typed(path: &std::path::Path, ours: Option<bool>) -> TypedModel {
    let mut onnx = tract_onnx::onnx();
    if let Some(our_ops) = ours {
        register(&mut onnx.op_register, our_ops);
    }
    crate::int8::op::typed_for_tests_with(onnx, path).unwrap()
}

/// The same nodes, names, inputs, output facts (constants' values included) and ops, the
/// EinSums' axes mappings included.
fn assert_same_graph(theirs: &TypedModel, ours: &TypedModel, case: &str) {
    assert_eq!(theirs.nodes.len(), ours.nodes.len(), "{case}");
    for (t, o) in theirs.nodes.iter().zip(&ours.nodes) {
        assert_eq!(t.name, o.name, "{case}");
        assert_eq!(t.inputs, o.inputs, "{case}: {}", t.name);
        assert_eq!(t.outputs.len(), o.outputs.len(), "{case}: {}", t.name);
        for (tf, of) in t.outputs.iter().zip(&o.outputs) {
            assert_eq!(tf.fact, of.fact, "{case}: {}", t.name);
        }
        assert_eq!(
            format!("{:?}", t.op),
            format!("{:?}", o.op),
            "{case}: {}",
            t.name
        );
        assert_eq!(
            t.op_as::<EinSum>(),
            o.op_as::<EinSum>(),
            "{case}: {}",
            t.name
        );
    }
    assert_eq!(theirs.inputs, ours.inputs, "{case}");
    assert_eq!(theirs.outputs, ours.outputs, "{case}");
}

/// Over every int8 fixture, our parser gives the typed graph tract-onnx's gives: the same
/// nodes, names, inputs, facts and ops (the EinSums' axes mappings included).
#[test]
fn typed_graphs_are_tracts() {
    let mut einsums = 0;
    for rel in [
        "electra-tiny-zh/discriminator/model.onnx",
        "electra-small-zh/discriminator/model.onnx",
    ] {
        let path = fixture(rel);
        let (theirs, ours) = (typed(&path, None), typed(&path, Some(false)));
        assert_same_graph(&theirs, &ours, rel);
        einsums += ours
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<EinSum>())
            .filter(|e| e.operating_dt == i32::datum_type())
            .count();
    }
    assert!(einsums > 75, "{einsums} quantized EinSums compared");
}

/// An initializer of small integers (as int32_data, whatever `dt`).
fn int(name: &str, dt: DataType, dims: &[usize]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt as i32,
        int32_data: (0..dims.iter().product::<usize>())
            .map(|i| (i * 7 % 11) as i32 - 5)
            .collect(),
        ..Default::default()
    }
}

/// A one-node `MatMulInteger` model: A `u8` of rank `a_rank` ([.., 4, 6]), B an `i8`
/// initializer of rank `b_rank` ([.., 6, 5]), zero points named by `zp` (A's, B's; "" =
/// absent) of `zp_len` elements (a scalar when 0).
fn one_node(a_rank: usize, b_rank: usize, zp: [&str; 2], zp_len: [usize; 2]) -> ModelProto {
    let dims = |rank: usize, last: [usize; 2]| {
        let mut d = vec![2; rank - 2];
        d.extend(last);
        d
    };
    let (a_dims, b_dims) = (dims(a_rank, [4, 6]), dims(b_rank, [6, 5]));
    let mut inits = vec![int("b", DataType::Int8, &b_dims)];
    let mut inputs = vec![info("a", DataType::Uint8, &a_dims)];
    let zp_dims = |len: usize| if len == 0 { vec![] } else { vec![len] };
    if !zp[0].is_empty() {
        inputs.push(info(zp[0], DataType::Uint8, &zp_dims(zp_len[0])));
    }
    if !zp[1].is_empty() {
        inits.push(int(zp[1], DataType::Int8, &zp_dims(zp_len[1])));
    }
    let mut names = vec!["a", "b", zp[0], zp[1]];
    while names.last() == Some(&"") {
        names.pop();
    }
    let mut out_dims = vec![2; a_rank.max(b_rank) - 2];
    out_dims.extend([4, 5]);
    let node = NodeProto {
        op_type: "MatMulInteger".into(),
        name: "mm".into(),
        input: names.iter().map(|s| s.to_string()).collect(),
        output: vec!["y".into()],
        ..Default::default()
    };
    one_node_model(node, inputs, inits, info("y", DataType::Int32, &out_dims))
}

/// Ranks (A's with B's, equal or broadcast) and zero points (absent, skipped with "",
/// scalar, per row of A or per column of B): the typed graph, values included, is
/// tract-onnx's.
#[test]
fn one_node_graphs_are_tracts() {
    let mut cases = 0;
    for (a_rank, b_rank) in [(2, 2), (3, 2), (3, 3), (4, 2), (4, 4), (2, 3)] {
        for zp in [["", ""], ["az", ""], ["", "bz"], ["az", "bz"]] {
            for zp_len in [[0, 0], [4, 5]] {
                let proto = one_node(a_rank, b_rank, zp, zp_len);
                let typed = |ours: bool| {
                    let mut onnx = tract_onnx::onnx();
                    if ours {
                        register(&mut onnx.op_register, false);
                    }
                    onnx.model_for_proto_model(&proto)?.into_typed()
                };
                let case = format!("ranks {a_rank}/{b_rank}, zero points {zp:?} {zp_len:?}");
                let (theirs, ours) = (typed(false).unwrap(), typed(true).unwrap());
                assert_same_graph(&theirs, &ours, &case);
                let einsum = ours.nodes.iter().find_map(|n| n.op_as::<EinSum>());
                assert!(einsum.is_some(), "{case}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 48);
}

/// A MatMulInteger with an input missing is refused as tract-onnx refuses it.
#[test]
fn malformed_nodes_are_refused_like_tract() {
    let mut proto = one_node(3, 2, ["", ""], [0, 0]);
    proto.graph.as_mut().unwrap().node[0].input.truncate(1);
    let error = |ours: bool| {
        let mut onnx = tract_onnx::onnx();
        if ours {
            register(&mut onnx.op_register, false);
        }
        let typed = onnx
            .model_for_proto_model(&proto)
            .and_then(|m| m.into_typed());
        format!("{:#}", typed.unwrap_err())
    };
    let ours = error(true);
    assert!(ours.contains("Wrong input number"), "{ours}");
    assert_eq!(ours, error(false));
}

/// A float initializer, values `seed`-dependent in about [-1, 1].
fn floats(name: &str, dims: &[usize], seed: usize) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        float_data: (0..dims.iter().product::<usize>())
            .map(|i| ((i * 37 + seed * 11) % 23) as f32 / 11.0 - 1.0)
            .collect(),
        ..Default::default()
    }
}

/// tract-onnx's typing of a proto, with our parsers (our ops included) when `ours`.
fn typed_proto(proto: &ModelProto, ours: bool) -> TypedModel {
    let mut onnx = tract_onnx::onnx();
    if ours {
        register(&mut onnx.op_register, true);
    }
    onnx.model_for_proto_model(proto)
        .and_then(|m| m.into_typed())
        .unwrap()
}

fn run(model: &TypedModel, x: &Tensor) -> Vec<f32> {
    let plan = model.clone().into_runnable().unwrap();
    let out = plan.run(tvec!(x.clone().into_tvalue())).unwrap();
    let out = out[0].cast_to::<f32>().unwrap();
    out.try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

/// `LayerNormalization` over the last axis with constant scale (and bias) is one
/// AddLayerNorm node computing what tract's expansion computes (to 1e-5); every other form
/// (another axis, extra outputs, scale not a constant, statistics in f64) is typed exactly
/// as tract-onnx types it.
#[test]
fn layer_norm_forms() {
    const N: usize = 20;
    let x_info = || info("x", DataType::Float, &[2, 3, N]);
    let y_info = || info("y", DataType::Float, &[2, 3, N]);
    let x: Tensor = tract_ndarray::Array3::from_shape_fn((2, 3, N), |(a, b, c)| {
        ((a * 7 + b * 5 + c * 3) % 17) as f32 * 0.3 - 2.0
    })
    .into();
    let attr_i = |name: &str, i: i64| AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    };
    let attr_f = |name: &str, f: f32| AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    };
    struct Case {
        what: &'static str,
        inputs: Vec<&'static str>,
        outputs: Vec<&'static str>,
        attrs: Vec<AttributeProto>,
        /// scale as a graph input instead of an initializer
        scale_input: bool,
        ours: bool,
        eps: f32,
    }
    let case = |what, inputs: &[&'static str], attrs, ours, eps| Case {
        what,
        inputs: inputs.to_vec(),
        outputs: vec!["y"],
        attrs,
        scale_input: false,
        ours,
        eps,
    };
    let cases = vec![
        case("plain", &["x", "s", "b"], vec![], true, 1e-5),
        case("no bias", &["x", "s"], vec![], true, 1e-5),
        case(
            "axis 2 of 3",
            &["x", "s", "b"],
            vec![attr_i("axis", 2)],
            true,
            1e-5,
        ),
        case(
            "epsilon",
            &["x", "s", "b"],
            vec![attr_f("epsilon", 1e-12)],
            true,
            1e-12,
        ),
        case(
            "axis 1",
            &["x", "s2", "b2"],
            vec![attr_i("axis", 1)],
            false,
            0.0,
        ),
        case(
            "stash f64",
            &["x", "s", "b"],
            vec![attr_i("stash_type", 11)],
            false,
            0.0,
        ),
        Case {
            outputs: vec!["y", "mean"],
            ..case("mean output", &["x", "s", "b"], vec![], false, 0.0)
        },
        Case {
            scale_input: true,
            ..case("scale an input", &["x", "s", "b"], vec![], false, 0.0)
        },
    ];
    for c in cases {
        let mut inits = vec![
            floats("b", &[N], 2),
            floats("s2", &[3, N], 3),
            floats("b2", &[3, N], 4),
        ];
        let mut inputs = vec![x_info()];
        if c.scale_input {
            inputs.push(info("s", DataType::Float, &[N]));
        } else {
            inits.push(floats("s", &[N], 1));
        }
        let node = NodeProto {
            op_type: "LayerNormalization".into(),
            name: "ln".into(),
            input: c.inputs.iter().map(|s| s.to_string()).collect(),
            output: c.outputs.iter().map(|s| s.to_string()).collect(),
            attribute: c.attrs,
            ..Default::default()
        };
        let proto = one_node_model(node, inputs, inits, y_info());
        let (theirs, ours) = (typed_proto(&proto, false), typed_proto(&proto, true));
        let what = c.what;
        let norms: Vec<&AddLayerNorm> = ours
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<AddLayerNorm>())
            .collect();
        if !c.ours {
            assert!(norms.is_empty(), "{what}");
            assert_same_graph(&theirs, &ours, what);
            continue;
        }
        assert_eq!(norms.len(), 1, "{what}: {ours}");
        assert_eq!(norms[0].eps, c.eps, "{what}");
        assert_eq!(norms[0].beta.is_some(), c.inputs.len() == 3, "{what}");
        assert!(ours.nodes.iter().all(|n| n.op.name() != "Rsqrt"), "{what}");
        let (want, got) = (run(&theirs, &x), run(&ours, &x));
        assert_eq!(want.len(), 2 * 3 * N);
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{what}: max difference {diff}");
    }
}

/// A LayerNorm with no add before it, typed by tract or by our parser: the ops stage counts
/// and installs it once, with its options, and folds no add.
#[test]
fn a_layer_norm_alone_is_one_op() {
    use crate::ops::{fuse_transformer_ops, OpsOptions, OpsReport};
    const N: usize = 20;
    let node = NodeProto {
        op_type: "LayerNormalization".into(),
        name: "ln".into(),
        input: vec!["x".into(), "s".into(), "b".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    let proto = one_node_model(
        node,
        vec![info("x", DataType::Float, &[1, 5, N])],
        vec![floats("s", &[N], 1), floats("b", &[N], 2)],
        info("y", DataType::Float, &[1, 5, N]),
    );
    for ours in [false, true] {
        let mut m = typed_proto(&proto, ours);
        let opts = OpsOptions {
            kernel: None,
            threads: 3,
        };
        let report = fuse_transformer_ops(&mut m, &opts).unwrap();
        let want = OpsReport {
            layer_norms: 1,
            ..Default::default()
        };
        assert_eq!(report, want, "ours: {ours}");
        let norms: Vec<&AddLayerNorm> = m
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<AddLayerNorm>())
            .collect();
        assert_eq!(norms.len(), 1, "ours: {ours}: {m}");
        assert_eq!(norms[0].threads, 3, "ours: {ours}");
    }
}

/// On the fixtures' graphs (fp32 and int8, every head, the trained MiniLM too), typing
/// LayerNorms as AddLayerNorm at parse time ends, after the int8 fusion and our ops, in the
/// same graph as tract's typing followed by the rewrite: the same ops installed and the
/// same outputs, bit for bit.
#[test]
fn fixtures_end_in_the_same_ops() {
    use crate::ops::{fuse_transformer_ops, OpsOptions};
    let mut files: Vec<String> = ["discriminator", "classifier", "tagger", "encoder"]
        .iter()
        .flat_map(|h| ["model.onnx", "model.fp32.onnx"].map(|f| format!("electra-tiny-zh/{h}/{f}")))
        .collect();
    files.push("electra-small-zh/discriminator/model.onnx".into());
    files.push("minilm-l6/model.onnx".into());
    for rel in files {
        let path = fixture(&rel);
        let opts = OpsOptions {
            kernel: None,
            threads: 2,
        };
        let ready = |ours: Option<bool>| {
            let mut m = typed(&path, ours);
            crate::int8::fuse_quantized_matmuls(&mut m).unwrap();
            let report = fuse_transformer_ops(&mut m, &opts).unwrap();
            (m, report)
        };
        let (theirs, their_report) = ready(None);
        let (ours, our_report) = ready(Some(true));
        assert!(our_report.layer_norms > 0, "{rel}: {our_report:?}");
        assert_eq!(our_report, their_report, "{rel}");
        let count = |m: &TypedModel| m.nodes.iter().filter(|n| n.op_is::<AddLayerNorm>()).count();
        assert_eq!(count(&ours), our_report.layer_norms, "{rel}");
        let inputs = |m: &TypedModel, seq: usize| -> TVec<TValue> {
            m.input_outlets()
                .unwrap()
                .iter()
                .map(|o| {
                    let name = &m.node(o.node).name;
                    let t: Tensor = tract_ndarray::Array2::from_shape_fn((1, seq), |(_, j)| {
                        if name.contains("mask") {
                            (j + 2 < seq) as i64
                        } else if name.contains("type") {
                            0
                        } else {
                            (100 + 37 * j as i64) % 5000
                        }
                    })
                    .into();
                    t.into_tvalue()
                })
                .collect()
        };
        let plans = [theirs, ours].map(|m| m.into_optimized().unwrap().into_runnable().unwrap());
        for seq in [3, 17] {
            let outs: Vec<_> = plans
                .iter()
                .map(|p| p.run(inputs(p.model(), seq)).unwrap())
                .collect();
            assert_eq!(outs[0].len(), outs[1].len());
            for (a, b) in outs[0].iter().zip(&outs[1]) {
                assert_eq!(a, b, "{rel}, {seq} tokens");
            }
        }
    }
}
