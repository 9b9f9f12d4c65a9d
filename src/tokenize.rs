//! The tokenizer of a model folder, and encoding with character offsets.
//!
//! `tokenizer.json` is loaded as it is (truncation and padding switched off: the runtime makes
//! its own windows); without it, `vocab.txt` is wrapped in the BERT pipeline that
//! `BertTokenizer` uses (clean text, CJK characters split, lowercase, WordPiece with `##`).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::Tokenizer;

/// A token of the input text: its id and its `[start, end)` range in **characters** (Unicode
/// scalar values, as Python's `str` counts them), not bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: i64,
    pub start: usize,
    pub end: usize,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    pub cls_id: i64,
    pub sep_id: i64,
}

/// Special-token names and casing from `tokenizer_config.json`, with BERT defaults.
#[derive(serde::Deserialize)]
struct TokenizerConfig {
    #[serde(default = "default_cls")]
    cls_token: String,
    #[serde(default = "default_sep")]
    sep_token: String,
    #[serde(default = "default_unk")]
    unk_token: String,
    #[serde(default = "default_true")]
    do_lower_case: bool,
}

fn default_cls() -> String {
    "[CLS]".into()
}
fn default_sep() -> String {
    "[SEP]".into()
}
fn default_unk() -> String {
    "[UNK]".into()
}
fn default_true() -> bool {
    true
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `dir`, or falls back to `vocab.txt` with BERT settings.
    pub fn load(dir: &Path) -> Result<TextTokenizer> {
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("invalid {}", config_path.display()))?
        } else {
            serde_json::from_str("{}")?
        };
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let mut inner = if json.exists() {
            Tokenizer::from_file(&json).map_err(|e| anyhow!("invalid {}: {e}", json.display()))?
        } else if vocab.exists() {
            bert_tokenizer(&vocab, &config)?
        } else {
            anyhow::bail!("{} has neither tokenizer.json nor vocab.txt", dir.display());
        };
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("cannot switch truncation off: {e}"))?
            .with_padding(None);
        let id_of = |name: &str| -> Result<i64> {
            inner
                .token_to_id(name)
                .map(i64::from)
                .ok_or_else(|| anyhow!("the tokenizer's vocabulary has no {name} token"))
        };
        Ok(TextTokenizer {
            cls_id: id_of(&config.cls_token)?,
            sep_id: id_of(&config.sep_token)?,
            inner,
        })
    }

    /// How many token ids the tokenizer has (its vocabulary with added tokens): the ids it
    /// produces are below this.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokens of `text` without special tokens, offsets in characters.
    pub fn encode(&self, text: &str) -> Result<Vec<Token>> {
        let encoding = self
            .inner
            .encode_char_offsets(text, false)
            .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .map(|(&id, &(start, end))| Token {
                id: i64::from(id),
                start,
                end,
            })
            .collect())
    }
}

fn bert_tokenizer(vocab: &Path, config: &TokenizerConfig) -> Result<Tokenizer> {
    let path = vocab
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", vocab.display()))?;
    let wordpiece = WordPiece::from_file(path)
        .unk_token(config.unk_token.clone())
        .build()
        .map_err(|e| anyhow!("invalid {}: {e}", vocab.display()))?;
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            true,
            None,
            config.do_lower_case,
        )))
        .with_pre_tokenizer(Some(BertPreTokenizer));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with only a hand-written vocab.txt: exercises the fallback and lets offsets be
    /// checked by hand on CJK, emoji and full-width text.
    fn vocab_dir() -> crate::testutil::TempDir {
        let vocab =
            "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n我\n爱\n北\n京\nａ\n##ｂ\nhello\n##llo\nhe\n！\n";
        let dir = crate::testutil::TempDir::new("tok");
        std::fs::write(dir.path().join("vocab.txt"), vocab).unwrap();
        dir
    }

    #[test]
    fn vocab_fallback_ids_and_char_offsets() {
        let dir = vocab_dir();
        let tok = TextTokenizer::load(dir.path()).unwrap();
        assert_eq!((tok.cls_id, tok.sep_id), (2, 3));
        // 😀 is one character (4 UTF-8 bytes) and unknown; ＡＢ is full-width, lowercased.
        let tokens = tok.encode("我爱😀北京ＡＢ Hello！").unwrap();
        let got: Vec<(i64, usize, usize)> = tokens.iter().map(|t| (t.id, t.start, t.end)).collect();
        assert_eq!(
            got,
            [
                (5, 0, 1),
                (6, 1, 2),
                (1, 2, 3),
                (7, 3, 4),
                (8, 4, 5),
                (9, 5, 6),
                (10, 6, 7),
                (11, 8, 13),
                (14, 13, 14)
            ]
        );
    }

    #[test]
    fn missing_tokenizer_is_a_clear_error() {
        let dir = crate::testutil::TempDir::new("tok-empty");
        let err = TextTokenizer::load(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("neither tokenizer.json nor vocab.txt"),
            "{err}"
        );
    }
}
