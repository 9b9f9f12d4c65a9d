//! `config.json` of a model folder (the transformers config) and the task it implies.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The transformers classes served, and the task each implies.
pub const ARCHITECTURES: [(&str, Task); 7] = [
    ("ElectraForPreTraining", Task::Discriminator),
    ("ElectraForSequenceClassification", Task::Classify),
    ("ElectraForTokenClassification", Task::Tag),
    ("ElectraModel", Task::Embed),
    ("BertForSequenceClassification", Task::Classify),
    ("BertForTokenClassification", Task::Tag),
    ("BertModel", Task::Embed),
];

/// What the model folder's head computes, and so what an answer looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// `ElectraForPreTraining`: per-token "replaced" probability (typo spotting).
    Discriminator,
    /// `*ForSequenceClassification`: one label for the whole text.
    Classify,
    /// `*ForTokenClassification`: per-token labels decoded into entity spans.
    Tag,
    /// `ElectraModel` / `BertModel`: a pooled `last_hidden_state` vector.
    Embed,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Discriminator, Task::Classify, Task::Tag, Task::Embed];

    pub fn name(self) -> &'static str {
        match self {
            Task::Discriminator => "discriminator",
            Task::Classify => "classify",
            Task::Tag => "tag",
            Task::Embed => "embed",
        }
    }

    /// The task a transformers architecture name implies, if we serve it: the ELECTRA and BERT
    /// classes in [`ARCHITECTURES`] (BERT covers Chinese RoBERTa-style checkpoints such as HFL's
    /// RBT3 / RoBERTa-wwm-ext and sentence-transformers' MiniLM, which are `BertModel`s).
    /// Other names, including `BertForPreTraining` (masked-LM + next-sentence heads, not a
    /// replaced-token detector), give `None`.
    pub fn from_architecture(arch: &str) -> Option<Task> {
        ARCHITECTURES
            .iter()
            .find(|(name, _)| *name == arch)
            .map(|(_, task)| *task)
    }

    /// The ONNX output holding this task's raw result (the first output is used if absent).
    pub fn output_name(self) -> &'static str {
        match self {
            Task::Embed => "last_hidden_state",
            _ => "logits",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Task> {
        match s {
            "discriminator" | "rtd" => Ok(Task::Discriminator),
            "classify" | "classifier" => Ok(Task::Classify),
            "tag" | "tagger" | "ner" => Ok(Task::Tag),
            "embed" | "encoder" => Ok(Task::Embed),
            _ => bail!("unknown task {s:?} (expected discriminator, classify, tag or embed)"),
        }
    }
}

/// The fields of a transformers `config.json` that the runtime uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub hidden_size: Option<usize>,
    /// Label names by class index; JSON keys are strings ("0", "1", ...).
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
}

fn default_max_positions() -> usize {
    512
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ModelConfig> {
        let config: ModelConfig = serde_json::from_str(text)?;
        if config.max_position_embeddings < 3 {
            bail!(
                "max_position_embeddings {} is too small",
                config.max_position_embeddings
            );
        }
        Ok(config)
    }

    /// The task named by `architectures`, or an error saying what was found.
    pub fn task(&self) -> Result<Task> {
        for arch in &self.architectures {
            if let Some(task) = Task::from_architecture(arch) {
                return Ok(task);
            }
        }
        let known: Vec<&str> = ARCHITECTURES.iter().map(|(name, _)| *name).collect();
        bail!(
            "config.json architectures {:?} name no task electra-edge serves (known: {}); pass --task",
            self.architectures,
            known.join(", ")
        )
    }

    /// Label names in class order; missing entries are named `LABEL_i` as transformers does.
    pub fn labels(&self, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                self.id2label
                    .get(&i.to_string())
                    .cloned()
                    .unwrap_or(format!("LABEL_{i}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_from_architectures() {
        let cases = [
            ("ElectraForPreTraining", Task::Discriminator),
            ("ElectraForSequenceClassification", Task::Classify),
            ("ElectraForTokenClassification", Task::Tag),
            ("ElectraModel", Task::Embed),
            ("BertModel", Task::Embed),
            ("BertForSequenceClassification", Task::Classify),
            ("BertForTokenClassification", Task::Tag),
        ];
        for (arch, task) in cases {
            let c = ModelConfig::parse(&format!(r#"{{"architectures":["{arch}"]}}"#)).unwrap();
            assert_eq!(c.task().unwrap(), task, "{arch}");
        }
        // heads we do not serve, and names that only look like ours
        for arch in [
            "ElectraForMaskedLM",
            "BertForPreTraining",
            "BertForMaskedLM",
            "BertLMHeadModel",
            "GPT2LMHeadModel",
            "T5Model",
        ] {
            let c = ModelConfig::parse(&format!(r#"{{"architectures":["{arch}"]}}"#)).unwrap();
            let e = c.task().unwrap_err().to_string();
            assert!(
                e.contains("--task") && e.contains("BertModel"),
                "{arch}: {e}"
            );
        }
        // the first served name wins when several are listed
        let c = ModelConfig::parse(r#"{"architectures":["BertForMaskedLM","BertModel"]}"#).unwrap();
        assert_eq!(c.task().unwrap(), Task::Embed);
        // the shared MiniLM fixture's config (a real sentence-transformers export)
        let fixture = crate::testutil::fixture("minilm-l6/config.json");
        let c = ModelConfig::load(&fixture).unwrap();
        assert_eq!(c.task().unwrap(), Task::Embed);
        assert_eq!(c.hidden_size, Some(384));
    }

    #[test]
    fn labels_fill_gaps() {
        let c = ModelConfig::parse(r#"{"id2label":{"0":"neg","2":"pos"}}"#).unwrap();
        assert_eq!(c.labels(3), ["neg", "LABEL_1", "pos"]);
        assert_eq!(c.max_position_embeddings, 512);
    }
}
