//! Typed answers as JSON lines: the one place that knows the answer's wire format.
//!
//! Answers are serialized straight into the output bytes (no intermediate JSON tree), with
//! texts sliced from the request's text by the answers' character offsets, f32 values as the
//! shortest decimal that reads back as the same f32, and `id` first when the request had one.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::tasks::{classify, discriminator, embed, tag, Answer, Logits, Response};

/// `x` as the shortest decimal that reads back as the same `f32`: JSON numbers are f64, and
/// widening an f32 directly would print noise digits (0.4912135 as 0.49121350049972534).
pub fn short_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The JSON line (no newline) answering a request with `id` for `text`.
pub fn answer_line(id: Option<&Value>, text: &str, response: &Response) -> String {
    let line = Line {
        id,
        body: Body {
            text: &Chars::new(text),
            response,
        },
    };
    serde_json::to_string(&line).expect("answers serialize")
}

/// The task name an answer carries in its `task` field.
pub fn task_name(answer: &Answer) -> &'static str {
    match answer {
        Answer::Discriminator(_) => "discriminator",
        Answer::Classify(_) => "classify",
        Answer::Tag(_) => "tag",
        Answer::Embed(_) => "embed",
    }
}

/// Character offsets to byte offsets of one text, to slice token texts in one pass.
struct Chars<'a> {
    text: &'a str,
    /// Byte offset of each character, and the text's length at the end.
    starts: Vec<usize>,
}

impl<'a> Chars<'a> {
    fn new(text: &'a str) -> Chars<'a> {
        let mut starts: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        starts.push(text.len());
        Chars { text, starts }
    }

    /// The characters `start..end` (clamped to the text).
    fn slice(&self, start: usize, end: usize) -> &'a str {
        let last = self.starts.len() - 1;
        let (s, e) = (start.min(last), end.min(last).max(start.min(last)));
        &self.text[self.starts[s]..self.starts[e]]
    }
}

struct Line<'a> {
    id: Option<&'a Value>,
    body: Body<'a>,
}

struct Body<'a> {
    text: &'a Chars<'a>,
    response: &'a Response,
}

impl Serialize for Line<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(id) = self.id {
            m.serialize_entry("id", id)?;
        }
        self.body.fields(&mut m)?;
        m.end()
    }
}

impl Body<'_> {
    fn fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        let chars = self.text;
        let answer = &self.response.answer;
        m.serialize_entry("task", task_name(answer))?;
        match answer {
            Answer::Discriminator(a) => discriminator_fields(m, chars, a)?,
            Answer::Classify(a) => classify_fields(m, a)?,
            Answer::Tag(a) => tag_fields(m, chars, a)?,
            Answer::Embed(a) => embed_fields(m, a)?,
        }
        if let Some(raw) = &self.response.raw {
            m.serialize_entry("input_ids", &raw.input_ids)?;
            match &raw.logits {
                Some(Logits::PerToken(p)) if p.width == 1 => {
                    m.serialize_entry("logits", &F32s(&p.data))?
                }
                Some(Logits::PerToken(p)) => m.serialize_entry("logits", &Rows(p))?,
                Some(Logits::Pooled(v)) => m.serialize_entry("logits", &F32s(v))?,
                None => {}
            }
        }
        Ok(())
    }
}

fn discriminator_fields<M: SerializeMap>(
    m: &mut M,
    chars: &Chars,
    a: &discriminator::Answer,
) -> Result<(), M::Error> {
    let token = |t: &discriminator::ScoredToken| Obj {
        fields: [
            ("text", Field::Str(chars.slice(t.start, t.end))),
            ("start", Field::Usize(t.start)),
            ("end", Field::Usize(t.end)),
            ("score", Field::F32(t.score)),
        ],
    };
    let span = |t: &discriminator::Span| Obj {
        fields: [
            ("text", Field::Str(chars.slice(t.start, t.end))),
            ("start", Field::Usize(t.start)),
            ("end", Field::Usize(t.end)),
            ("score", Field::F32(t.score)),
        ],
    };
    m.serialize_entry("tokens", &Seq(&a.tokens, token))?;
    m.serialize_entry("flagged", &Seq(&a.flagged, span))
}

fn classify_fields<M: SerializeMap>(m: &mut M, a: &classify::Answer) -> Result<(), M::Error> {
    m.serialize_entry("label", &a.label)?;
    m.serialize_entry("score", &short_f64(a.score))?;
    fn score(s: &classify::LabelScore) -> Obj<'_, 2> {
        Obj {
            fields: [
                ("label", Field::Str(&s.label)),
                ("score", Field::F32(s.score)),
            ],
        }
    }
    m.serialize_entry("scores", &Seq(&a.scores, score))
}

fn tag_fields<'a, M: SerializeMap>(
    m: &mut M,
    chars: &'a Chars<'a>,
    a: &'a tag::Answer,
) -> Result<(), M::Error> {
    let entity = |e: &'a tag::Entity| Obj {
        fields: [
            ("type", Field::Str(&e.kind)),
            ("text", Field::Str(chars.slice(e.start, e.end))),
            ("start", Field::Usize(e.start)),
            ("end", Field::Usize(e.end)),
            ("score", Field::F32(e.score)),
        ],
    };
    m.serialize_entry("entities", &Seq(&a.entities, entity))?;
    if let Some(tokens) = &a.tokens {
        let token = |t: &tag::TokenLabel| Obj {
            fields: [
                ("text", Field::Str(chars.slice(t.start, t.end))),
                ("start", Field::Usize(t.start)),
                ("end", Field::Usize(t.end)),
                (
                    "label",
                    Field::Str(a.labels.get(t.label).map_or("", String::as_str)),
                ),
                ("score", Field::F32(t.score)),
            ],
        };
        m.serialize_entry("tokens", &Seq(tokens, token))?;
    }
    Ok(())
}

fn embed_fields<M: SerializeMap>(m: &mut M, a: &embed::Answer) -> Result<(), M::Error> {
    m.serialize_entry("pooling", a.pooling.name())?;
    m.serialize_entry("normalized", &a.normalized)?;
    m.serialize_entry("dim", &a.embedding.len())?;
    m.serialize_entry("embedding", &F32s(&a.embedding))
}

/// One field value of a small fixed-shape object.
enum Field<'a> {
    Str(&'a str),
    Usize(usize),
    F32(f32),
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Str(v) => s.serialize_str(v),
            Field::Usize(v) => s.serialize_u64(*v as u64),
            Field::F32(v) => s.serialize_f64(short_f64(*v)),
        }
    }
}

/// An object with `N` fields in this order.
struct Obj<'a, const N: usize> {
    fields: [(&'static str, Field<'a>); N],
}

impl<const N: usize> Serialize for Obj<'_, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(N))?;
        for (k, v) in &self.fields {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A JSON array of `items`, each turned into an object by the function.
struct Seq<'a, T, F>(&'a [T], F);

impl<'a, T, F, O> Serialize for Seq<'a, T, F>
where
    F: Fn(&'a T) -> O,
    O: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&(self.1)(item))?;
        }
        seq.end()
    }
}

/// f32 values as a JSON array of shortest decimals.
struct F32s<'a>(&'a [f32]);

impl Serialize for F32s<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|&x| short_f64(x)))
    }
}

/// Per-token rows as nested arrays.
struct Rows<'a>(&'a crate::tasks::PerToken);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.data.chunks(self.0.width).map(F32s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{PerToken, Raw};
    use serde_json::json;

    #[test]
    fn discriminator_line_with_raw() {
        let response = Response {
            answer: Answer::Discriminator(discriminator::Answer {
                tokens: vec![
                    discriminator::ScoredToken {
                        start: 0,
                        end: 1,
                        score: 0.25,
                    },
                    discriminator::ScoredToken {
                        start: 1,
                        end: 3,
                        score: 0.491_213_5,
                    },
                ],
                flagged: vec![discriminator::Span {
                    start: 1,
                    end: 3,
                    score: 0.9,
                }],
            }),
            raw: Some(Raw {
                input_ids: vec![101, 5, 6, 102],
                logits: Some(Logits::PerToken(PerToken {
                    width: 1,
                    data: vec![1.0, -0.5, 0.1, 2.0],
                })),
            }),
        };
        let line = answer_line(Some(&json!({"k": 1})), "我😀门", &response);
        assert_eq!(
            line,
            r#"{"id":{"k":1},"task":"discriminator","tokens":[{"text":"我","start":0,"end":1,"score":0.25},{"text":"😀门","start":1,"end":3,"score":0.4912135}],"flagged":[{"text":"😀门","start":1,"end":3,"score":0.9}],"input_ids":[101,5,6,102],"logits":[1.0,-0.5,0.1,2.0]}"#
        );
    }

    #[test]
    fn tag_classify_and_embed_lines() {
        let labels: std::sync::Arc<[String]> = vec!["O".to_string(), "B-PER".to_string()].into();
        let tag = Response {
            answer: Answer::Tag(tag::Answer {
                entities: vec![tag::Entity {
                    kind: "PER".into(),
                    start: 0,
                    end: 1,
                    score: 0.5,
                }],
                tokens: Some(vec![tag::TokenLabel {
                    start: 0,
                    end: 1,
                    label: 1,
                    score: 0.5,
                }]),
                labels,
            }),
            raw: Some(Raw {
                input_ids: vec![101, 7, 102],
                logits: Some(Logits::PerToken(PerToken {
                    width: 2,
                    data: vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0],
                })),
            }),
        };
        assert_eq!(
            answer_line(None, "张", &tag),
            r#"{"task":"tag","entities":[{"type":"PER","text":"张","start":0,"end":1,"score":0.5}],"tokens":[{"text":"张","start":0,"end":1,"label":"B-PER","score":0.5}],"input_ids":[101,7,102],"logits":[[1.0,0.0],[0.0,1.0],[1.0,0.0]]}"#
        );
        let classify = Response {
            answer: Answer::Classify(classify::Answer {
                label: "pos".into(),
                score: 0.75,
                scores: vec![classify::LabelScore {
                    label: "pos".into(),
                    score: 0.75,
                }],
            }),
            raw: None,
        };
        assert_eq!(
            answer_line(Some(&json!(3)), "x", &classify),
            r#"{"id":3,"task":"classify","label":"pos","score":0.75,"scores":[{"label":"pos","score":0.75}]}"#
        );
        let embed = Response {
            answer: Answer::Embed(embed::Answer {
                pooling: embed::Pooling::Cls,
                normalized: true,
                embedding: vec![0.6, 0.8],
            }),
            raw: Some(Raw {
                input_ids: vec![101, 102],
                logits: None,
            }),
        };
        assert_eq!(
            answer_line(None, "x", &embed),
            r#"{"task":"embed","pooling":"cls","normalized":true,"dim":2,"embedding":[0.6,0.8],"input_ids":[101,102]}"#
        );
    }

    #[test]
    fn offsets_past_the_text_are_clamped() {
        let c = Chars::new("我爱😀北京");
        assert_eq!(c.slice(1, 4), "爱😀北");
        assert_eq!(c.slice(4, 99), "京");
        assert_eq!(c.slice(9, 3), "");
    }
}
