//! Our parser for ONNX `MatMulInteger`, registered over tract-onnx's own: the same typed graph
//! (a rank-broadcast, then one 9-input `EinSum` with i32 accumulation, which the int8 fusion
//! matches), built faster.
//!
//! tract-onnx derives the `EinSum`'s axes mapping anew for each node through a dozen
//! `renaming`/`linking` steps that re-sort and re-check the whole mapping each time: 75
//! `MatMulInteger` nodes in ELECTRA-small spent ~3% of the start there. All of them share one
//! mapping per combination of input ranks, so it is derived once per combination and cloned.
//! The derivation is the same sequence of steps on tract's public API, so the mapping is equal
//! to tract's (tested, along with the whole typed graph).

use std::collections::HashMap;
use std::sync::Mutex;

use tract_onnx::model::{optional_inputs, OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::binary::wire_rank_broadcast;
use tract_onnx::tract_hir::ops::expandable::expand;

/// Registers our parsers over tract-onnx's for the same op types.
pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("MatMulInteger", mat_mul_integer);
}

fn mat_mul_integer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    // inputs: A, B, then the optional zero points of A and B (absent or named "")
    let mut zero_points = optional_inputs(node).skip(2);
    let op = MatMulInteger {
        a_zero_point: zero_points.next().flatten(),
        b_zero_point: zero_points.next().flatten(),
    };
    Ok((expand(op), vec![]))
}

/// ONNX `MatMulInteger`: `(A - a_zero_point) x (B - b_zero_point)` in i32, with numpy matmul
/// broadcasting.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct MatMulInteger {
    /// index among the node's inputs, when given
    a_zero_point: Option<usize>,
    b_zero_point: Option<usize>,
}

impl Expansion for MatMulInteger {
    fn name(&self) -> StaticName {
        "MatMulInteger".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        let optional = self.a_zero_point.is_some() as usize + self.b_zero_point.is_some() as usize;
        check_input_arity(inputs, 2 + optional)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, i32::datum_type())?;
        if let Some(z) = self.a_zero_point {
            s.equals(&inputs[z].datum_type, &inputs[0].datum_type)?
        }
        if let Some(z) = self.b_zero_point {
            s.equals(&inputs[z].datum_type, &inputs[1].datum_type)?
        }
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, a, b| {
            let (_, _, c, _) =
                tract_onnx::tract_hir::ops::matmul::compute_shapes(a, b, false, false, false)?;
            s.equals(&outputs[0].shape, c)
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        // the EinSum's inputs, as tract's quantized EinSum takes them: A, B (same rank), bias,
        // then zero point and scale of A, of B, and of the output
        let mut wires = wire_rank_broadcast(prefix, target, &[inputs[0], inputs[1]])?;
        wires.push(target.add_const(format!("{prefix}.bias"), tensor0(0i32))?);
        wires.push(match self.a_zero_point {
            Some(z) => inputs[z],
            None => target.add_const(format!("{prefix}.a0"), tensor0(0i32))?,
        });
        wires.push(target.add_const(format!("{prefix}.a_scale"), tensor0(1f32))?);
        wires.push(match self.b_zero_point {
            Some(z) => inputs[z],
            None => target.add_const(format!("{prefix}.b0"), tensor0(0i32))?,
        });
        wires.push(target.add_const(format!("{prefix}.b_scale"), tensor0(1f32))?);
        wires.push(target.add_const(format!("{prefix}.c0"), tensor0(0i32))?);
        wires.push(target.add_const(format!("{prefix}.c_scale"), tensor0(1f32))?);
        let ranks = wires
            .iter()
            .map(|w| Ok(target.outlet_fact(*w)?.rank()))
            .collect::<TractResult<Vec<usize>>>()?;
        let op = EinSum {
            axes: matmul_axes(&ranks)?,
            operating_dt: i32::datum_type(),
            q_params: Some(i32::datum_type()),
        };
        target.wire_node(prefix, op, &wires)
    }
}

/// The axes mapping of a quantized matmul `EinSum` with inputs of these ranks, derived once per
/// combination of ranks.
fn matmul_axes(ranks: &[usize]) -> TractResult<AxesMapping> {
    static DERIVED: Mutex<Option<HashMap<Vec<usize>, AxesMapping>>> = Mutex::new(None);
    let mut derived = DERIVED.lock().unwrap_or_else(|p| p.into_inner());
    let derived = derived.get_or_insert_with(HashMap::new);
    if let Some(axes) = derived.get(ranks) {
        return Ok(axes.clone());
    }
    let axes = derive_matmul_axes(ranks)?;
    derived.insert(ranks.to_vec(), axes.clone());
    Ok(axes)
}

/// `[.., m, k] x [.., k, n] -> [.., m, n]` over the leading axes of A and B; the zero point of
/// A, when a vector, runs along m, B's along n; the other quantization inputs are the scalars
/// `wire` adds. The steps and their order are tract-onnx's, so that the axis labels come out
/// the same.
fn derive_matmul_axes(ranks: &[usize]) -> TractResult<AxesMapping> {
    let scalars = [2, 4, 6, 7, 8];
    if ranks.len() != 9
        || ranks[0] < 2
        || ranks[1] != ranks[0]
        || scalars.iter().any(|&i| ranks[i] != 0)
        || ranks[3] > 1
        || ranks[5] > 1
    {
        bail!("MatMulInteger: unexpected input ranks {ranks:?}");
    }
    let rank = ranks[0];
    let mut axes = AxesMapping::disconnected_for_ranks(ranks, &ranks[0..1])?
        .renaming((InOut::In(0), rank - 2), 'm')?
        .linking('m', (InOut::Out(0), rank - 2))?
        .renaming((InOut::In(1), rank - 1), 'n')?
        .linking('n', (InOut::Out(0), rank - 1))?
        .renaming((InOut::In(0), rank - 1), 'k')?
        .linking('k', (InOut::In(1), rank - 2))?;
    for ax in 0..rank - 2 {
        axes = axes
            .linking((InOut::In(0), ax), (InOut::In(1), ax))?
            .linking((InOut::In(0), ax), (InOut::Out(0), ax))?;
    }
    for (slot, along) in [(3, 'm'), (5, 'n')] {
        if ranks[slot] == 1 {
            axes = axes.linking(along, (InOut::In(slot), 0))?;
        }
    }
    Ok(axes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tract_onnx::pb::tensor_proto::DataType;
    use tract_onnx::pb::*;

    use crate::testutil::fixture;

    /// tract-onnx's parse and typing of a model (inputs `[1, S]`, as the loader binds them),
    /// with or without our parsers.
    fn typed(path: &std::path::Path, ours: bool) -> TypedModel {
        let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
        if ours {
            register(&mut onnx.op_register);
        }
        let mut model = onnx.model_for_path(path).unwrap();
        let s = model.symbols.sym("S");
        for ix in 0..model.inputs.len() {
            let fact = i64::fact([1.to_dim(), s.to_dim()]);
            model.set_input_fact(ix, fact.into()).unwrap();
        }
        model.into_typed().unwrap()
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
            let (theirs, ours) = (typed(&path, false), typed(&path, true));
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
        let info = |name: &str, elem: DataType, dims: &[usize]| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| tensor_shape_proto::Dimension {
                                value: Some(tensor_shape_proto::dimension::Value::DimValue(
                                    d as i64,
                                )),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let int = |name: &str, dt: DataType, dims: &[usize]| TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dt as i32,
            int32_data: (0..dims.iter().product::<usize>())
                .map(|i| (i * 7 % 11) as i32 - 5)
                .collect(),
            ..Default::default()
        };
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
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "g".into(),
                node: vec![NodeProto {
                    op_type: "MatMulInteger".into(),
                    name: "mm".into(),
                    input: names.iter().map(|s| s.to_string()).collect(),
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                initializer: inits,
                input: inputs,
                output: vec![info("y", DataType::Int32, &out_dims)],
                ..Default::default()
            }),
            ..Default::default()
        }
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
                            register(&mut onnx.op_register);
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
                register(&mut onnx.op_register);
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
}
