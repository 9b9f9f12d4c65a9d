//! No panic from a model file: tract's parse, typing and optimisation run under
//! [`std::panic::catch_unwind`], and a panic becomes one error naming the node and op when
//! known (typing is done node by node, as tract's own `into_typed` does, so a panic in one
//! op's translation names that node) and where in tract it happened.
//!
//! While a guarded call runs, the default panic message on stderr is suppressed (a
//! process-wide hook, installed once, that stays quiet only for the thread inside a guard
//! and otherwise defers to the previous hook): the caller prints the error once.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use tract_core::internal::translator::Translate;
use tract_onnx::tract_hir::internal::*;

thread_local! {
    static GUARDED: Cell<usize> = const { Cell::new(0) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) > 0 {
                let loc = info
                    .location()
                    .map(|l| format!(" at {}:{}", short_path(l.file()), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{}{loc}", payload(info))));
            } else {
                previous(info)
            }
        }));
    });
}

/// `.../tract-onnx-0.23.9/src/ops/nn/attention.rs` -> `tract-onnx-0.23.9/src/ops/nn/attention.rs`
fn short_path(file: &str) -> &str {
    file.rfind("/tract-")
        .map(|i| &file[i + 1..])
        .unwrap_or(file)
}

fn payload(info: &std::panic::PanicHookInfo) -> String {
    let p = info.payload();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs `f`; a panic inside becomes `Err("<what>: tract panicked: <message> at <file:line>")`.
pub fn catch<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    r.unwrap_or_else(|_| {
        let msg = LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "panic".into());
        Err(anyhow!("{what}: tract panicked: {msg}"))
    })
}

/// [`catch`] for tract results.
pub fn catch_tract<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    catch(what, || f().map_err(|e| anyhow!("{what}: {e:#}")))
}

/// `model.into_typed()`, guarded: analysis and early rewrites as one step, then each node's
/// translation on its own, so that a panic names its node.
pub fn into_typed(model: InferenceModel) -> Result<TypedModel> {
    let m = catch_tract("cannot type the graph", move || {
        let mut model = model;
        model.analyse(false)?;
        // tract's `incorporate` lets ops rewrite the analysed graph, then compacts it and
        // analyses it all again. No op of the ONNX graphs we load asks for that (none of
        // tract-onnx 0.23's ops does), so the second analysis (~15% of the start) is only
        // run when one does; translation walks the graph from its outputs, as compacting
        // would.
        let mut asks = false;
        for id in model.eval_order()? {
            let node = model.node(id);
            if node.op.incorporate(&model, node)?.is_some() {
                asks = true;
                break;
            }
        }
        if asks {
            model.incorporate()
        } else {
            Ok(model)
        }
    })?;
    catch_tract("cannot type the graph", || {
        TypedTranslation::default().translate_model(&m)
    })
}

/// tract's inference-to-typed translation (as in `tract-hir`'s `into_typed`), each node under
/// [`catch_unwind`], with the nodes whose value analysis already knows added as constants
/// through [`ConstIndex`] instead of tract's `add_const`.
#[derive(Debug, Default)]
struct TypedTranslation {
    consts: RefCell<ConstIndex>,
}

/// Tensors up to this many elements are indexed by value in [`ConstIndex`]; bigger ones (the
/// weights: hashing them would cost more than it saves) only by type and shape.
const HASHED_CONST_ELEMENTS: usize = 4096;

/// What `TypedModel::add_const` does (share a constant with an equal one already in the graph,
/// else add it under a name not taken yet), without its scans of every node of the graph for
/// each constant added: those made typing quadratic in the node count (~2,000 nodes for
/// ELECTRA-small: ~25 ms of a ~150 ms start). The index follows the target graph as it grows
/// (nodes are only added while translating), so names and constants that tract's own ops add
/// are seen too.
#[derive(Debug, Default)]
struct ConstIndex {
    /// nodes of the target graph already indexed
    seen: usize,
    names: std::collections::HashSet<String>,
    /// hash of (datum type, shape, and the values of small tensors) -> const node ids
    by_key: HashMap<u64, Vec<usize>>,
}

impl ConstIndex {
    fn key(t: &Tensor) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if t.len() <= HASHED_CONST_ELEMENTS {
            t.hash(&mut h);
        } else {
            t.datum_type().hash(&mut h);
            t.shape().hash(&mut h);
        }
        h.finish()
    }

    fn sync(&mut self, target: &TypedModel) {
        for node in &target.nodes()[self.seen..] {
            self.names.insert(node.name.clone());
            if node.op_is::<tract_core::ops::konst::Const>() {
                if let Some(k) = &node.outputs[0].fact.konst {
                    self.by_key.entry(Self::key(k)).or_default().push(node.id);
                }
            }
        }
        self.seen = target.nodes().len();
    }

    fn add_const(
        &mut self,
        target: &mut TypedModel,
        name: String,
        v: Arc<Tensor>,
    ) -> TractResult<OutletId> {
        self.sync(target);
        let key = Self::key(&v);
        if let Some(ids) = self.by_key.get(&key) {
            for &id in ids {
                if target.nodes()[id].outputs[0].fact.konst.as_ref() == Some(&v) {
                    return Ok(id.into());
                }
            }
        }
        let name = if self.names.contains(&name) {
            (1..)
                .map(|i| format!("{name}.{i}"))
                .find(|n| !self.names.contains(n))
                .expect("a free name")
        } else {
            name
        };
        let fact = TypedFact::try_from(v.clone())?;
        let op = match &fact.exotic_fact {
            Some(exotic) => tract_core::ops::konst::Const::new_with_exotic_fact(v, exotic.clone())?,
            None => tract_core::ops::konst::Const::new(v)?,
        };
        // indexed by the next call's `sync`
        let id = target.add_node(name, op, tvec!(fact))?;
        Ok(id.into())
    }
}

impl TypedTranslation {
    /// A binary element-wise op (`Add`, `Mul`, ...) with a constant input of lower rank than
    /// the other: tract wires an `AddAxis` node per missing axis in front of the constant (each
    /// added node scans the whole graph for its name: ~8% of the start for ELECTRA-small's
    /// ~500 bias adds and scale multiplications). The constant gets the leading axes itself
    /// instead, through the index, and tract's wiring then has nothing to add; what the graph
    /// computes is the same (declutter folds those `AddAxis` nodes into the constants anyway).
    /// `None` when the node is not such an op.
    fn binary_with_constants_at_rank(
        &self,
        source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<Option<TVec<OutletId>>> {
        use tract_onnx::tract_hir::ops::binary::InferenceBinOp;
        use tract_onnx::tract_hir::ops::expandable::Expansion;
        let Some(expansion) = node.op.as_op().downcast_ref::<Box<dyn Expansion>>() else {
            return Ok(None);
        };
        if !expansion.as_any().is::<InferenceBinOp>() || node.inputs.len() != 2 {
            return Ok(None);
        }
        let mut inputs: TVec<OutletId> = node.inputs.iter().map(|i| mapping[i]).collect();
        let facts = inputs
            .iter()
            .map(|&o| target.outlet_fact(o).cloned())
            .collect::<TractResult<TVec<_>>>()?;
        let rank = facts.iter().map(|f| f.rank()).max().unwrap_or(0);
        let mut fixed = false;
        for (input, fact) in inputs.iter_mut().zip(&facts) {
            let Some(konst) = fact.konst.as_ref().filter(|_| fact.rank() < rank) else {
                continue;
            };
            if konst.is_exotic() {
                return Ok(None);
            }
            let mut t = konst.as_ref().clone();
            while t.rank() < rank {
                t.insert_axis(0)?;
            }
            let name = format!("{}.rank{rank}", target.node(input.node).name);
            *input = self
                .consts
                .borrow_mut()
                .add_const(target, name, t.into_arc_tensor())?;
            fixed = true;
        }
        if !fixed {
            return Ok(None);
        }
        // the rest of tract-hir's `to_typed` for expansions: wire, then check the facts
        let outputs = expansion
            .wire_with_inference_model_and_node(&node.name, source, node, target, &inputs)?;
        for (ix, o) in outputs.iter().enumerate() {
            let expected = &node.outputs[ix].fact;
            let got = target.outlet_fact(*o)?;
            if expected
                .clone()
                .unify_with(&InferenceFact::from(got))
                .is_err()
            {
                bail!(
                    "output mismatch after wiring {}: expected {expected:?} got {got:?}",
                    node.name
                );
            }
        }
        Ok(Some(outputs))
    }
}

impl Translate<InferenceFact, Box<dyn InferenceOp>, TypedFact, Box<dyn TypedOp>>
    for TypedTranslation
{
    fn translate_node(
        &self,
        source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let is_source = node
            .op
            .as_op()
            .downcast_ref::<tract_onnx::tract_hir::ops::source::Source>()
            .is_some();
        if !is_source
            && node.op.state(&EvalContext::out_of_plan())?.is_none()
            && source
                .node_output_facts(node.id)?
                .iter()
                .all(|f| f.value.is_concrete())
        {
            let mut consts = self.consts.borrow_mut();
            return (0..node.outputs.len())
                .map(|ix| {
                    consts.add_const(
                        target,
                        format!("{}.{}", node.name, ix),
                        node.outputs[ix]
                            .fact
                            .value
                            .concretize()
                            .context("concrete value")?,
                    )
                })
                .collect();
        }
        install_hook();
        GUARDED.with(|g| g.set(g.get() + 1));
        let r = catch_unwind(AssertUnwindSafe(|| {
            match self.binary_with_constants_at_rank(source, node, target, mapping)? {
                Some(outputs) => Ok(outputs),
                None => node.op.to_typed(source, node, target, mapping),
            }
        }));
        GUARDED.with(|g| g.set(g.get() - 1));
        let outputs = match r {
            Ok(r) => r?,
            Err(_) => {
                let msg = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "panic".into());
                bail!(
                    "node {:?} (op {}) is not supported: tract panicked: {msg}",
                    node.name,
                    node.op.name()
                )
            }
        };
        for output in &outputs {
            target.outlet_fact(*output)?.consistent()?;
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary op with a constant of lower rank than its other input: typed without an
    /// `AddAxis` node in front of the constant (the constant has the leading axes itself), and
    /// computing what tract's typing computes.
    #[test]
    fn binary_constants_get_the_rank_of_the_other_input() {
        use tract_onnx::tract_hir::ops::binary::InferenceBinOp;
        use tract_onnx::tract_hir::ops::expandable::expand;
        let mut model = InferenceModel::default();
        let x = model.add_source("x", f32::fact([1, 3, 20]).into()).unwrap();
        let c = model
            .add_const(
                "c",
                tensor1(&(0..20).map(|j| j as f32 - 2.0).collect::<Vec<_>>()),
            )
            .unwrap();
        let s = model.add_const("s", tensor0(2.0f32)).unwrap();
        let bin = |op: Box<dyn tract_core::ops::binary::BinMiniOp>| expand(InferenceBinOp(op));
        let y = model
            .wire_node("y", bin(Box::new(tract_core::ops::math::Add)), &[c, x])
            .unwrap()[0];
        let z = model
            .wire_node("z", bin(Box::new(tract_core::ops::math::Mul)), &[y, s])
            .unwrap()[0];
        model.select_output_outlets(&[z]).unwrap();
        let ours = into_typed(model.clone()).unwrap();
        let theirs = model.into_typed().unwrap();
        let add_axes = |m: &TypedModel| m.nodes().iter().filter(|n| n.op_is::<AxisOp>()).count();
        // tract folds the scalar's new axes at once (fewer than 16 values), not the vector's
        assert_eq!(add_axes(&theirs), 2, "tract's typing: {theirs}");
        assert_eq!(add_axes(&ours), 0, "ours: {ours}");
        let input: Tensor =
            tract_ndarray::Array3::from_shape_fn((1, 3, 20), |(_, i, j)| i as f32 * 1.5 - j as f32)
                .into();
        let run = |m: TypedModel| {
            let out = m
                .into_runnable()
                .unwrap()
                .run(tvec!(input.clone().into()))
                .unwrap();
            out[0].clone().into_tensor()
        };
        let (ours, theirs) = (run(ours), run(theirs));
        assert_eq!(ours.shape(), &[1, 3, 20]);
        assert_eq!(ours, theirs);
        let first = ours.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap()[..4].to_vec();
        assert_eq!(first, vec![-4.0, -4.0, -4.0, -4.0]); // (x + c) * 2, row 0: (-j + j - 2) * 2
    }

    /// `ConstIndex::add_const` answers as tract's `add_const`: an equal constant already in the
    /// graph (added by anyone) is shared, a taken name gets the next free `.N`.
    #[test]
    fn const_index_shares_equal_constants_and_keeps_names_unique() {
        let mut model = TypedModel::default();
        let mut index = ConstIndex::default();
        let a = model.add_const("a", tensor1(&[1.0f32, 2.0])).unwrap();
        let big: Vec<i8> = (0..5000).map(|i| (i % 251) as i8).collect();
        let w = model.add_const("w", tensor1(&big)).unwrap();
        let mut add = |m: &mut TypedModel, name: &str, t: Tensor| {
            index
                .add_const(m, name.to_string(), t.into_arc_tensor())
                .unwrap()
        };
        assert_eq!(add(&mut model, "x", tensor1(&[1.0f32, 2.0])), a);
        assert_eq!(add(&mut model, "y", tensor1(&big)), w);
        let mut other = big.clone();
        other[4999] = 0;
        let o = add(&mut model, "w", tensor1(&other));
        assert_ne!(o, w);
        assert_eq!(model.node(o.node).name, "w.1");
        model.add_const("w.2", tensor1(&[7i64])).unwrap();
        let p = add(&mut model, "w", tensor1(&[2.0f32, 1.0]));
        assert_eq!(model.node(p.node).name, "w.3");
        assert_eq!(
            add(&mut model, "z", tensor1(&[7i64])).node,
            model.nodes().len() - 2
        );
        assert_eq!(model.nodes().len(), 5);
    }
}
