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
        model.incorporate()
    })?;
    catch_tract("cannot type the graph", || {
        TypedTranslation.translate_model(&m)
    })
}

/// tract's inference-to-typed translation (as in `tract-hir`'s `into_typed`), each node under
/// [`catch_unwind`].
#[derive(Debug)]
struct TypedTranslation;

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
            return (0..node.outputs.len())
                .map(|ix| {
                    target.add_const(
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
