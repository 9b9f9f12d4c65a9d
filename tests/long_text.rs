//! Texts longer than one window: every character gets exactly one score, taken from the window
//! that owns it, and equal to running that window's text alone.

mod common;

use common::fixtures;
use electra_edge::engine::{Engine, EngineOptions};
use electra_edge::tasks::{Answer, AnswerOptions, Response};
use electra_edge::windows::WindowPlan;

const TEXT: &str =
    "春眠不觉晓处处闻啼鸟夜来风雨声花落知多少床前明月光疑是地上霜举头望明月低头思故乡";

fn engine(head: &str, window_tokens: Option<usize>) -> Engine {
    let options = EngineOptions {
        window_tokens,
        overlap: Some(3),
        ..Default::default()
    };
    Engine::load(&fixtures().join("electra-tiny-zh").join(head), options).unwrap()
}

fn raw() -> AnswerOptions {
    AnswerOptions {
        raw: true,
        ..Default::default()
    }
}

/// The raw logits of an answer asked with `raw`.
fn raw_logits(response: &Response) -> Vec<f32> {
    let raw = response.raw.as_ref().expect("raw output");
    raw.logits.as_ref().expect("logits").values().to_vec()
}

#[test]
fn discriminator_windows_stitch_to_one_score_per_character() {
    let windowed = engine("discriminator", Some(10)); // 8 text tokens per window
    let whole = engine("discriminator", None);
    let chars: Vec<char> = TEXT.chars().collect();
    let response = windowed.answer(TEXT, &raw()).unwrap();
    let Answer::Discriminator(answer) = &response.answer else {
        panic!("a discriminator answer")
    };
    assert_eq!(answer.tokens.len(), chars.len());
    for (i, t) in answer.tokens.iter().enumerate() {
        assert_eq!(t.start, i);
    }
    let logits = raw_logits(&response);
    assert_eq!(logits.len(), chars.len() + 2);

    let plan = WindowPlan::new(chars.len(), 8, 3);
    assert!(plan.windows.len() > 3);
    // Each window's text run alone, once.
    let alone: Vec<Vec<f32>> = plan
        .windows
        .iter()
        .map(|range| {
            let window_text: String = chars[range.clone()].iter().collect();
            raw_logits(&whole.answer(&window_text, &raw()).unwrap())
        })
        .collect();
    for i in 0..chars.len() {
        let w = plan.owner[i];
        let expected = alone[w][1 + i - plan.windows[w].start];
        assert!(
            (logits[1 + i] - expected).abs() < 1e-6,
            "char {i}: stitched {} vs its window alone {expected}",
            logits[1 + i]
        );
    }
}

#[test]
fn classifier_averages_window_logits() {
    let windowed = engine("classifier", Some(10));
    let whole = engine("classifier", None);
    let chars: Vec<char> = TEXT.chars().collect();
    let plan = WindowPlan::new(chars.len(), 8, 3);
    let mut mean = vec![0f32; 3];
    for range in &plan.windows {
        let window_text: String = chars[range.clone()].iter().collect();
        let logits = raw_logits(&whole.answer(&window_text, &raw()).unwrap());
        for (m, l) in mean.iter_mut().zip(logits) {
            *m += l / plan.windows.len() as f32;
        }
    }
    let got = raw_logits(&windowed.answer(TEXT, &raw()).unwrap());
    for (g, m) in got.iter().zip(&mean) {
        assert!((g - m).abs() < 1e-6, "{got:?} vs {mean:?}");
    }
}
