//! The embedding tables a graph looks rows up in, found once at load, and their check against
//! what the runtime will look up.
//!
//! tract's `Gather` panics on a row index past the end of its table, so a graph whose table is
//! smaller than the ids fed to it (a corrupted header that shrinks the word-embedding table's
//! shape, a graph exported with another tokenizer) would load and then fail every request. The
//! engine checks the tables against the tokenizer's vocabulary, the window length and the
//! token type ids it uses before it answers anything, and refuses the folder otherwise.
//!
//! A table is a `Gather` on axis 0 of 2-D data (a constant, or a dequantized constant: the
//! data's shape is known after typing either way), recognized by what indexes it: the
//! `input_ids` input (word table), the `token_type_ids` input (token type table), or values
//! computed inside the graph, such as `0..S` sliced from a constant or made by a `Range`
//! (position table, when it has the word table's width). Index wires are followed back through
//! casts and axis changes. A graph whose tables are not recognized is not checked.

use anyhow::{bail, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;

use super::inputs::InputKind;

/// Rows of the graph's embedding tables; `None` where the graph has no such lookup (or it was
/// not recognized).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmbeddingTables {
    /// Indexed by `input_ids`: one row per token id.
    pub word: Option<usize>,
    /// Indexed by the positions `0..S`.
    pub position: Option<usize>,
    /// Indexed by `token_type_ids`.
    pub token_type: Option<usize>,
}

/// What the runtime looks up in the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookups {
    /// Token ids are below this (the tokenizer's vocabulary size).
    pub vocabulary: usize,
    /// Positions are below this (tokens per window, `[CLS]` and `[SEP]` included).
    pub window: usize,
    /// Token type ids are below this.
    pub token_types: usize,
}

/// Where a `Gather`'s indices come from.
#[derive(Debug, PartialEq, Eq)]
enum Indices {
    Input(InputKind),
    Computed,
}

impl EmbeddingTables {
    /// The tables of a typed graph whose inputs are `inputs` (in the graph's input order).
    pub(super) fn find(model: &TypedModel, inputs: &[InputKind]) -> EmbeddingTables {
        let sources = model.input_outlets().unwrap_or(&[]);
        // (rows, width) of every 2-D table gathered on axis 0, by what indexes it
        let mut word = None;
        let mut token_type = None;
        let mut computed = vec![];
        for node in model.nodes() {
            let Some(gather) = node.op_as::<Gather>() else {
                continue;
            };
            if gather.axis != 0 || node.inputs.len() != 2 {
                continue;
            }
            let Ok(data) = model.outlet_fact(node.inputs[0]) else {
                continue;
            };
            let dims: Option<Vec<usize>> = data.shape.iter().map(|d| d.to_usize().ok()).collect();
            let Some(&[rows, width]) = dims.as_deref() else {
                continue;
            };
            match indices_of(model, sources, inputs, node.inputs[1]) {
                Indices::Input(InputKind::InputIds) => word = Some((rows, width)),
                Indices::Input(InputKind::TokenTypeIds) => token_type = Some(rows),
                Indices::Input(InputKind::AttentionMask) => {}
                Indices::Computed => computed.push((rows, width)),
            }
        }
        // the position table: indexed from inside the graph, as wide as the word table
        let position = word.and_then(|(_, width)| {
            computed
                .iter()
                .filter(|&&(_, w)| w == width)
                .map(|&(rows, _)| rows)
                .min()
        });
        EmbeddingTables {
            word: word.map(|(rows, _)| rows),
            position,
            token_type,
        }
    }

    /// Errors when a table has fewer rows than the ids looked up in it.
    pub fn check(&self, lookups: &Lookups) -> Result<()> {
        if let Some(rows) = self.word {
            if rows < lookups.vocabulary {
                bail!(
                    "the word embedding table has {rows} rows but the tokenizer's vocabulary \
                     has {} tokens",
                    lookups.vocabulary
                );
            }
        }
        if let Some(rows) = self.position {
            if rows < lookups.window {
                bail!(
                    "the position embedding table has {rows} rows but windows are {} tokens long",
                    lookups.window
                );
            }
        }
        if let Some(rows) = self.token_type {
            if rows < lookups.token_types {
                bail!(
                    "the token type embedding table has {rows} rows but token type id {} is used",
                    lookups.token_types - 1
                );
            }
        }
        Ok(())
    }
}

/// What feeds the wire `outlet`, through casts and axis changes.
fn indices_of(
    model: &TypedModel,
    sources: &[OutletId],
    inputs: &[InputKind],
    mut outlet: OutletId,
) -> Indices {
    loop {
        if let Some(ix) = sources.iter().position(|&s| s == outlet) {
            return match inputs.get(ix) {
                Some(&kind) => Indices::Input(kind),
                None => Indices::Computed,
            };
        }
        let node = model.node(outlet.node);
        if (node.op_is::<Cast>() || node.op_is::<AxisOp>()) && node.inputs.len() == 1 {
            outlet = node.inputs[0];
        } else {
            return Indices::Computed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{demo_models, fixture};

    /// The tables of a model file, typed as the loader types it.
    fn tables(path: &std::path::Path) -> EmbeddingTables {
        let decoded = super::super::decode::decode(path).unwrap();
        let (typed, inputs) =
            super::super::decode::parse_typed(path, &decoded, None, true).unwrap();
        EmbeddingTables::find(&typed, &inputs)
    }

    /// The tables' rows against the ONNX initializers' dims, read here with the `onnx`
    /// protobuf: word 21128 (tiny fixture, int8 and fp32) or 22194 (demo), 512 positions,
    /// 2 token types.
    #[test]
    fn tables_of_the_fixtures_and_demos() {
        use prost::Message;
        for (path, word_init) in [
            (
                fixture("electra-tiny-zh/discriminator/model.onnx"),
                "electra.embeddings.word_embeddings.weight_quantized",
            ),
            (
                fixture("electra-tiny-zh/discriminator/model.fp32.onnx"),
                "electra.embeddings.word_embeddings.weight",
            ),
            (
                demo_models().join("discriminator/model.onnx"),
                "inner.electra.embeddings.word_embeddings.weight_quantized",
            ),
        ] {
            let bytes = std::fs::read(&path).unwrap();
            let proto = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
            let dims = |name: &str| -> usize {
                let init = proto.graph.as_ref().unwrap().initializer.iter();
                init.clone()
                    .find(|t| t.name == name)
                    .map(|t| t.dims[0] as usize)
                    .unwrap_or_else(|| panic!("{}: no {name}", path.display()))
            };
            let position_init = word_init.replace("word_", "position_");
            let type_init = word_init.replace("word_", "token_type_");
            let want = EmbeddingTables {
                word: Some(dims(word_init)),
                position: Some(dims(&position_init)),
                token_type: Some(dims(&type_init)),
            };
            assert_eq!(tables(&path), want, "{}", path.display());
        }
    }

    #[test]
    fn a_table_smaller_than_its_lookups_is_refused() {
        let t = EmbeddingTables {
            word: Some(1000),
            position: Some(128),
            token_type: Some(2),
        };
        let fits = Lookups {
            vocabulary: 1000,
            window: 128,
            token_types: 1,
        };
        t.check(&fits).unwrap();
        let err = |l: Lookups| t.check(&l).unwrap_err().to_string();
        assert_eq!(
            err(Lookups {
                vocabulary: 1001,
                ..fits
            }),
            "the word embedding table has 1000 rows but the tokenizer's vocabulary has 1001 tokens"
        );
        assert_eq!(
            err(Lookups {
                window: 129,
                ..fits
            }),
            "the position embedding table has 128 rows but windows are 129 tokens long"
        );
        assert_eq!(
            err(Lookups {
                token_types: 3,
                ..fits
            }),
            "the token type embedding table has 2 rows but token type id 2 is used"
        );
        // unknown tables are not checked
        EmbeddingTables::default()
            .check(&Lookups {
                vocabulary: usize::MAX,
                ..fits
            })
            .unwrap();
    }
}
