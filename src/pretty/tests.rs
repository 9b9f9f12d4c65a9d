//! The pretty form of hand-made answers (its layout, exactly), and of the demo models' answers
//! against the JSON answer of the same input (values taken from the JSON, never hard-coded).

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::engine::{Engine, EngineOptions};
use crate::protocol::{answer_line, ErrorCode};
use crate::tasks::{AnswerOptions, Pooling};
use crate::testutil::demo_models;

fn response(answer: Answer) -> Response {
    Response { answer, raw: None }
}

fn discriminator_answer(flagged: &[(u32, u32, f32)]) -> Response {
    let spans = flagged
        .iter()
        .map(|&(start, end, score)| discriminator::Span { start, end, score })
        .collect();
    response(Answer::Discriminator(discriminator::Answer {
        tokens: vec![],
        flagged: spans,
    }))
}

#[test]
fn discriminator_layout() {
    let text = "我门今天去学校上科。";
    let r = discriminator_answer(&[(1, 2, 0.934), (8, 9, 0.6049)]);
    assert_eq!(
        answer(None, text, &r, Style::Plain),
        "我[门]今天去学校上[科]。\n  flagged: [门] 0.93, [科] 0.60\n"
    );
    assert_eq!(
        answer(Some(&json!(7)), text, &r, Style::Color),
        "id 7: 我\x1b[1;31m门\x1b[0m今天去学校上\x1b[1;31m科\x1b[0m。\n  flagged: \
         \x1b[1;31m门\x1b[0m 0.93, \x1b[1;31m科\x1b[0m 0.60\n"
    );
    let none = discriminator_answer(&[]);
    assert_eq!(
        answer(Some(&json!("a")), "我们", &none, Style::Plain),
        "id \"a\": 我们\n  nothing flagged\n"
    );
    // a span of several characters, at the end of the text
    let r = discriminator_answer(&[(2, 4, 0.7)]);
    assert_eq!(
        answer(None, "天气真号", &r, Style::Plain),
        "天气[真号]\n  flagged: [真号] 0.70\n"
    );
}

#[test]
fn classify_layout() {
    let scores: Vec<classify::LabelScore> = (0..7)
        .map(|i| classify::LabelScore {
            label: format!("L{i}"),
            score: [0.05, 0.6, 0.1, 0.05, 0.1, 0.05, 0.05][i],
        })
        .collect();
    let r = response(Answer::Classify(classify::Answer {
        label: "L1".into(),
        score: 0.6,
        scores,
    }));
    // highest first, ties in the head's order, five at most
    assert_eq!(
        answer(None, "好", &r, Style::Plain),
        "好\n  [L1] 0.60, L2 0.10, L4 0.10, L0 0.05, L3 0.05, (+2 more)\n"
    );
    assert_eq!(
        answer(None, "好", &r, Style::Color),
        "好\n  \x1b[1mL1\x1b[0m 0.60, L2 0.10, L4 0.10, L0 0.05, L3 0.05, (+2 more)\n"
    );
}

#[test]
fn tag_layout() {
    let labels: Arc<[String]> = Arc::from(vec!["O".to_string()]);
    let entity = |kind: &str, start, end, score| tag::Entity {
        kind: kind.into(),
        start,
        end,
        score,
    };
    let r = response(Answer::Tag(tag::Answer {
        entities: vec![entity("PER", 0, 2, 0.981), entity("LOC", 3, 5, 0.5)],
        tokens: None,
        labels: labels.clone(),
    }));
    let text = "张三在北京工作";
    assert_eq!(
        answer(None, text, &r, Style::Plain),
        "[张三/PER]在[北京/LOC]工作\n  entities: 张三 PER 0.98, 北京 LOC 0.50\n"
    );
    assert_eq!(
        answer(None, text, &r, Style::Color),
        "\x1b[1;36m张三\x1b[0m\x1b[2m/PER\x1b[0m在\x1b[1;36m北京\x1b[0m\x1b[2m/LOC\x1b[0m工作\n  \
         entities: 张三 PER 0.98, 北京 LOC 0.50\n"
    );
    let none = response(Answer::Tag(tag::Answer {
        entities: vec![],
        tokens: None,
        labels,
    }));
    assert_eq!(
        answer(None, text, &none, Style::Plain),
        "张三在北京工作\n  no entities\n"
    );
}

#[test]
fn embed_layout() {
    let r = response(Answer::Embed(embed::Answer {
        pooling: Pooling::Cls,
        normalized: false,
        embedding: vec![3.0, -4.0, 0.0, 0.12345, 0.0],
    }));
    assert_eq!(
        answer(None, "好", &r, Style::Plain),
        "好\n  embedding: 5 dims, cls pooling, L2 norm 5.00, first values 3.000 -4.000 0.000 \
         0.123 ...\n"
    );
    let r = response(Answer::Embed(embed::Answer {
        pooling: Pooling::Mean,
        normalized: true,
        embedding: vec![0.6, 0.8],
    }));
    assert_eq!(
        answer(None, "好", &r, Style::Color),
        "好\n  embedding: 2 dims, mean pooling, normalized, L2 norm 1.00, first values 0.600 \
         0.800\n"
    );
}

#[test]
fn error_layout() {
    let e = ErrorReply::new(Some(json!(3)), ErrorCode::EmptyText, "empty text");
    assert_eq!(
        error(&e, Style::Plain),
        "id 3: error (empty_text): empty text\n"
    );
    assert_eq!(
        error(&e, Style::Color),
        "id 3: \x1b[1;31merror\x1b[0m (empty_text): empty text\n"
    );
}

/// Control characters of a text (a terminal's escape sequences, line breaks) are shown
/// escaped: the only escapes written are the highlights'.
#[test]
fn texts_cannot_drive_the_terminal() {
    let text = "a\u{1b}[2Jb\nc";
    let r = discriminator_answer(&[(5, 6, 0.9)]); // "b"
    let plain = answer(None, text, &r, Style::Plain);
    assert_eq!(plain, "a\\u{1b}[2J[b]\\nc\n  flagged: [b] 0.90\n");
    let color = answer(None, text, &r, Style::Color);
    let ours = color.replace("\x1b[1;31m", "").replace("\x1b[0m", "");
    assert!(!ours.contains('\x1b'), "{color:?}");
    let e = ErrorReply::new(None, ErrorCode::BadRequest, "bad \u{1b}[31m");
    assert_eq!(
        error(&e, Style::Plain),
        "error (bad_request): bad \\u{1b}[31m\n"
    );
}

/// Offsets past the text (never made by the tasks) are clamped, overlapping spans skipped.
#[test]
fn odd_spans_do_not_panic() {
    let r = discriminator_answer(&[(1, 3, 0.9), (2, 9, 0.8), (7, 9, 0.7)]);
    assert_eq!(
        answer(None, "一二三", &r, Style::Plain),
        "一[二三]\n  flagged: [二三] 0.90, [三] 0.80, [] 0.70\n"
    );
}

/// `text` with each `(start, end)` character range wrapped in `open` and `close(i)`.
fn wrap(
    text: &str,
    spans: &[(usize, usize)],
    open: &str,
    close: &dyn Fn(usize) -> String,
) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if spans.iter().any(|s| s.0 == i) {
            out.push_str(open);
        }
        out.push(c);
        if let Some(k) = spans.iter().position(|s| s.1 == i + 1) {
            out.push_str(&close(k));
        }
    }
    out
}

fn f32_of(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn span_of(v: &Value) -> (usize, usize) {
    (
        v["start"].as_u64().unwrap() as usize,
        v["end"].as_u64().unwrap() as usize,
    )
}

fn demo(task: &str) -> Engine {
    Engine::load(&demo_models().join(task), EngineOptions::default()).unwrap()
}

/// The pretty answer and the JSON answer of one input.
fn both(engine: &Engine, text: &str, options: &AnswerOptions, style: Style) -> (String, Value) {
    let r = engine.answer(text, options).unwrap();
    let json: Value = serde_json::from_str(&answer_line(None, text, &r)).unwrap();
    (answer(None, text, &r, style), json)
}

/// The demo discriminator at several thresholds: the characters highlighted and the scores
/// shown are the JSON answer's flagged spans at the same threshold.
#[test]
fn demo_discriminator_shows_the_json_flags() {
    let engine = demo("discriminator");
    let mut flagged_seen = 0;
    for text in ["我门今天去学校上课。", "今天天气很好。", "他在图书馆看书"]
    {
        for threshold in [0.5, 0.2, 0.05, 0.0] {
            let options = AnswerOptions {
                threshold,
                ..engine.options.defaults.clone()
            };
            for style in [Style::Plain, Style::Color] {
                let (pretty, json) = both(&engine, text, &options, style);
                let flagged = json["flagged"].as_array().unwrap();
                flagged_seen += flagged.len();
                let spans: Vec<(usize, usize)> = flagged.iter().map(span_of).collect();
                let (open, close) = match style {
                    Style::Plain => ("[", "]"),
                    Style::Color => ("\x1b[1;31m", "\x1b[0m"),
                };
                let first = wrap(text, &spans, open, &|_| close.to_string());
                let detail = if flagged.is_empty() {
                    "nothing flagged".to_string()
                } else {
                    let items: Vec<String> = flagged
                        .iter()
                        .map(|f| {
                            let t = f["text"].as_str().unwrap();
                            format!("{open}{t}{close} {:.2}", f32_of(&f["score"]))
                        })
                        .collect();
                    format!("flagged: {}", items.join(", "))
                };
                assert_eq!(
                    pretty,
                    format!("{first}\n  {detail}\n"),
                    "{text} at {threshold}"
                );
            }
        }
    }
    // threshold 0 flags every character: the flagged layout was exercised
    assert!(flagged_seen > 0);
}

#[test]
fn demo_classifier_shows_the_json_labels() {
    let engine = demo("classifier");
    for text in ["这部电影太好看了，强烈推荐！", "服务很差，再也不来了。"]
    {
        let (pretty, json) = both(&engine, text, &engine.options.defaults, Style::Plain);
        let mut scores: Vec<(String, f32)> = json["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["label"].as_str().unwrap().to_string(),
                    f32_of(&s["score"]),
                )
            })
            .collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(scores[0].0, json["label"].as_str().unwrap());
        let mut items: Vec<String> = scores
            .iter()
            .take(MAX_LABELS)
            .enumerate()
            .map(|(i, (l, s))| match i {
                0 => format!("[{l}] {s:.2}"),
                _ => format!("{l} {s:.2}"),
            })
            .collect();
        if scores.len() > MAX_LABELS {
            items.push(format!("(+{} more)", scores.len() - MAX_LABELS));
        }
        assert_eq!(pretty, format!("{text}\n  {}\n", items.join(", ")));
    }
}

#[test]
fn demo_tagger_shows_the_json_entities() {
    let engine = demo("tagger");
    let mut entities_seen = 0;
    for text in [
        "张伟和李娜上周去了北京。",
        "王芳在上海的复旦大学工作。",
        "今天天气很好。",
    ] {
        for style in [Style::Plain, Style::Color] {
            let (pretty, json) = both(&engine, text, &engine.options.defaults, style);
            let entities = json["entities"].as_array().unwrap();
            entities_seen += entities.len();
            let mut inline: Vec<&Value> = entities.iter().collect();
            inline.sort_by_key(|e| span_of(e));
            let spans: Vec<(usize, usize)> = inline.iter().map(|e| span_of(e)).collect();
            let kind = |k: usize| inline[k]["type"].as_str().unwrap().to_string();
            let first = match style {
                Style::Plain => wrap(text, &spans, "[", &|k| format!("/{}]", kind(k))),
                Style::Color => wrap(text, &spans, "\x1b[1;36m", &|k| {
                    format!("\x1b[0m\x1b[2m/{}\x1b[0m", kind(k))
                }),
            };
            let detail = if entities.is_empty() {
                "no entities".to_string()
            } else {
                let items: Vec<String> = entities
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {} {:.2}",
                            e["text"].as_str().unwrap(),
                            e["type"].as_str().unwrap(),
                            f32_of(&e["score"])
                        )
                    })
                    .collect();
                format!("entities: {}", items.join(", "))
            };
            assert_eq!(pretty, format!("{first}\n  {detail}\n"), "{text}");
        }
    }
    eprintln!("{entities_seen} entities shown");
}

#[test]
fn demo_encoder_shows_the_json_embedding() {
    let engine = demo("encoder");
    for normalize in [false, true] {
        let options = AnswerOptions {
            normalize,
            ..engine.options.defaults.clone()
        };
        let text = "今天天气很好。";
        let (pretty, json) = both(&engine, text, &options, Style::Plain);
        let values: Vec<f32> = json["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(f32_of)
            .collect();
        assert_eq!(values.len() as u64, json["dim"].as_u64().unwrap());
        let norm = values
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let first: Vec<String> = values.iter().take(4).map(|v| format!("{v:.3}")).collect();
        let want =
            format!(
            "{text}\n  embedding: {} dims, {} pooling{}, L2 norm {norm:.2}, first values {} ...\n",
            values.len(),
            json["pooling"].as_str().unwrap(),
            if json["normalized"] == true { ", normalized" } else { "" },
            first.join(" ")
        );
        assert_eq!(pretty, want);
        if normalize {
            assert!(pretty.contains("L2 norm 1.00"), "{pretty}");
        }
    }
}
