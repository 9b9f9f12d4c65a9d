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
            node.op.to_typed(source, node, target, mapping)
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
