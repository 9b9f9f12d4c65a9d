//! What the expansions read from the graph around a node: which tensors are used, their ranks
//! and initializer dims, and a node's attributes and inputs.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, Result};
use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto};

/// onnxruntime's contrib-op domain.
pub(super) const MS: &str = "com.microsoft";

/// What the expansions need to know about the graph around a node.
pub(super) struct GraphInfo {
    /// Names consumed by some node or listed as graph outputs.
    used: HashSet<String>,
    /// Known ranks (graph inputs, outputs, value infos, initializers).
    ranks: HashMap<String, usize>,
    /// Initializer dims.
    pub(super) dims: HashMap<String, Vec<i64>>,
    /// The producer of each name.
    producers: HashMap<String, Producer>,
}

/// What [`GraphInfo::rank`] needs of a tensor's producer.
struct Producer {
    op: String,
    domain: String,
    /// Which output of the node the tensor is.
    slot: usize,
    first_input: Option<String>,
    /// A `perm` attribute's length.
    perm: Option<usize>,
    /// For reductions: `keepdims` and how many axes (attribute, or a constant second input).
    keepdims: bool,
    axes: Option<usize>,
}

impl GraphInfo {
    pub(super) fn new(g: &GraphProto, detached: &[(&str, Vec<i64>)]) -> GraphInfo {
        let mut used: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
        let mut producers = HashMap::new();
        // every initializer's name and dims: those in the graph, then the detached ones
        let initializers: Vec<(&str, &[i64])> = g
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), &t.dims[..]))
            .chain(detached.iter().map(|(n, d)| (*n, &d[..])))
            .collect();
        let init_len: HashMap<&str, usize> = initializers
            .iter()
            .map(|(n, d)| (*n, d.iter().product::<i64>() as usize))
            .collect();
        for n in &g.node {
            used.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
            let perm = attr(n, "perm").map(|a| a.ints.len());
            let axes = attr(n, "axes").map(|a| a.ints.len()).or_else(|| {
                let second = n.input.get(1)?;
                init_len.get(second.as_str()).copied()
            });
            for (slot, o) in n.output.iter().enumerate() {
                producers.insert(
                    o.clone(),
                    Producer {
                        op: n.op_type.clone(),
                        domain: n.domain.clone(),
                        slot,
                        first_input: n.input.first().cloned(),
                        perm,
                        keepdims: attr_i(n, "keepdims", 1) != 0,
                        axes,
                    },
                );
            }
        }
        let mut ranks = HashMap::new();
        for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
            use tract_onnx::pb::type_proto::Value;
            if let Some(Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                if let Some(s) = &t.shape {
                    ranks.insert(v.name.clone(), s.dim.len());
                }
            }
        }
        let dims: HashMap<String, Vec<i64>> = initializers
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_vec()))
            .collect();
        for (n, d) in &dims {
            ranks.insert(n.clone(), d.len());
        }
        GraphInfo {
            used,
            ranks,
            dims,
            producers,
        }
    }

    pub(super) fn is_used(&self, name: &str) -> bool {
        !name.is_empty() && self.used.contains(name)
    }

    /// The rank of a tensor when the graph tells it.
    pub(super) fn rank(&self, name: &str) -> Option<usize> {
        if let Some(&r) = self.ranks.get(name) {
            return Some(r);
        }
        let p = self.producers.get(name)?;
        match (p.op.as_str(), p.domain.as_str()) {
            ("EmbedLayerNormalization" | "QEmbedLayerNormalization", MS) if p.slot == 1 => Some(1),
            ("Cast" | "Identity", "") => self.rank(p.first_input.as_deref()?),
            ("Transpose", "") => p.perm,
            // the optimizer's mask index: ReduceSum(Cast(mask), axes [1], keepdims 0)
            ("ReduceSum", "") => {
                let r = self.rank(p.first_input.as_deref()?)?;
                if p.keepdims {
                    Some(r)
                } else {
                    r.checked_sub(p.axes?)
                }
            }
            _ => None,
        }
    }
}

pub(super) fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

pub(super) fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

pub(super) fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}

/// The `i`th input's name, `None` when absent or empty.
pub(super) fn input(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
}

pub(super) fn required<'n>(n: &'n NodeProto, i: usize, what: &str) -> Result<&'n str> {
    input(n, i).ok_or_else(|| anyhow!("input {i} ({what}) is missing"))
}
