//! Emitting standard ONNX nodes: the [`Builder`] that names them under a node's prefix, the
//! small constants they need, and the subgraphs several expansions share (the int8 matmul
//! chain, the erf GELU, LayerNormalization).

use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, NodeProto, TensorProto,
};

pub(super) fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub(super) fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub(super) fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// Emits standard nodes (and small constants) under a name prefix.
pub(super) struct Builder {
    prefix: String,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    count: usize,
    /// The default domain's opset (some attributes became inputs at 13 and 18).
    pub(super) opset: i64,
}

impl Builder {
    /// New node names are `<prefix>/<op>_<n>`.
    pub(super) fn new(prefix: String, opset: i64) -> Builder {
        Builder {
            prefix,
            nodes: vec![],
            inits: vec![],
            count: 0,
            opset,
        }
    }

    /// The nodes and constants emitted.
    pub(super) fn finish(self) -> (Vec<NodeProto>, Vec<TensorProto>) {
        (self.nodes, self.inits)
    }

    pub(super) fn fresh(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{}/{what}_{}", self.prefix, self.count)
    }

    /// One node with the given outputs.
    pub(super) fn node_to(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// One node with one fresh output; returns its name.
    pub(super) fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&format!("{op}_out"));
        self.node_to(op, inputs, &[&out], attrs);
        out
    }

    pub(super) fn konst(&mut self, t: TensorProto) -> String {
        let name = self.fresh("const");
        self.inits.push(TensorProto {
            name: name.clone(),
            ..t
        });
        name
    }

    pub(super) fn f32s(&mut self, v: &[f32], dims: &[i64]) -> String {
        self.konst(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        })
    }

    pub(super) fn i64s(&mut self, v: &[i64], dims: &[i64]) -> String {
        self.konst(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Int64 as i32,
            int64_data: v.to_vec(),
            ..Default::default()
        })
    }

    pub(super) fn i32s(&mut self, v: &[i32], dims: &[i64]) -> String {
        self.konst(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Int32 as i32,
            int32_data: v.to_vec(),
            ..Default::default()
        })
    }

    pub(super) fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let a = self.i64s(axes, &[axes.len() as i64]);
            self.node("Unsqueeze", &[x, &a], vec![])
        } else {
            self.node("Unsqueeze", &[x], vec![ints_attr("axes", axes)])
        }
    }

    pub(super) fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.i64s(shape, &[shape.len() as i64]);
        self.node("Reshape", &[x, &s], vec![])
    }

    pub(super) fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![ints_attr("perm", perm)])
    }

    pub(super) fn cast(&mut self, x: &str, to: DataType) -> String {
        self.node("Cast", &[x], vec![int_attr("to", to as i64)])
    }

    /// `Cast(MatMulInteger(a, b, a_zp, b_zp), f32) * (a_scale * b_scale) [+ bias]`: the
    /// `quantize_dynamic` chain our int8 fusion recognises.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn int_matmul(
        &mut self,
        a: &str,
        b: &str,
        a_scale: &str,
        b_scale: &str,
        a_zp: Option<&str>,
        b_zp: Option<&str>,
        bias: Option<&str>,
        out: Option<&str>,
    ) -> String {
        let mut ins = vec![a, b];
        match (a_zp, b_zp) {
            (None, None) => {}
            (a_zp, b_zp) => {
                ins.push(a_zp.unwrap_or(""));
                ins.extend(b_zp);
            }
        }
        let acc = self.node("MatMulInteger", &ins, vec![]);
        let accf = self.cast(&acc, DataType::Float);
        let scale = self.node("Mul", &[a_scale, b_scale], vec![]);
        let end = |b: &mut Builder, op: &str, ins: &[&str], last: bool| -> String {
            match out.filter(|_| last) {
                Some(o) => {
                    b.node_to(op, ins, &[o], vec![]);
                    o.to_string()
                }
                None => b.node(op, ins, vec![]),
            }
        };
        let y = end(self, "Mul", &[&accf, &scale], bias.is_none());
        match bias {
            Some(bias) => end(self, "Add", &[&y, bias], true),
            None => y,
        }
    }

    /// `x * (erf(x / sqrt 2) + 1) * 0.5` into `out`.
    pub(super) fn erf_gelu(&mut self, x: &str, out: &str) {
        let c = self.f32s(&[std::f32::consts::SQRT_2], &[]);
        let one = self.f32s(&[1.0], &[]);
        let half = self.f32s(&[0.5], &[]);
        let d = self.node("Div", &[x, &c], vec![]);
        let e = self.node("Erf", &[&d], vec![]);
        let p = self.node("Add", &[&e, &one], vec![]);
        let m = self.node("Mul", &[x, &p], vec![]);
        self.node_to("Mul", &[&m, &half], &[out], vec![]);
    }

    pub(super) fn layer_norm(
        &mut self,
        x: &str,
        gamma: &str,
        beta: Option<&str>,
        eps: f32,
        out: &str,
    ) {
        let mut ins = vec![x, gamma];
        ins.extend(beta);
        self.node_to(
            "LayerNormalization",
            &ins,
            &[out],
            vec![int_attr("axis", -1), float_attr("epsilon", eps)],
        );
    }
}
