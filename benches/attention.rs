//! Throughput of our attention kernel (`ops::attention_f32`), ELECTRA-small's shape (4 heads
//! of 64), one batch, no mask, in GFLOP/s of its two products (`Q K^T` and `P V`: 4 x seq^2 x
//! 256 flops) and ms per call, best of the calls that fit a time budget, thread CPU time.
//!
//! `cargo bench --bench attention [-- --seqs 128,512] [--kernel avx512|simd|scalar]` (default:
//! the best this CPU has; `simd` is AVX2 + FMA on x86-64, NEON on aarch64)

use electra_edge::ops::{attention_f32, AttnDims, OpsKernel};
use std::hint::black_box;
use std::time::Duration;

#[path = "../src/testutil.rs"]
mod testutil;
use testutil::XorShift;
#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let seqs: Vec<usize> = arg("--seqs")
        .unwrap_or_else(|| "32,128,512".into())
        .split(',')
        .map(|s| s.parse().expect("--seqs: numbers"))
        .collect();
    let kernel = match arg("--kernel").as_deref() {
        None => OpsKernel::best(),
        Some(name) => *OpsKernel::of_this_arch()
            .iter()
            .find(|k| k.name() == name || (name == "simd" && **k == OpsKernel::Simd))
            .unwrap_or_else(|| panic!("--kernel {name}: not a kernel of this architecture")),
    };
    assert!(
        kernel.is_available(),
        "--kernel {}: this CPU lacks {}",
        kernel.name(),
        kernel.features()
    );
    let (heads, head_dim) = (4, 64);
    let mut rng = XorShift::new(7);
    println!(
        "kernel {}, {heads} heads x {head_dim}, one thread",
        kernel.name()
    );
    println!("| seq | ms per call | GFLOP/s |");
    println!("| --- | --- | --- |");
    for seq in seqs {
        let n = seq * heads * head_dim;
        let mut values = |n: usize| (0..n).map(|_| rng.f32(-1.0, 1.0)).collect::<Vec<f32>>();
        let (q, k, v) = (values(n), values(n), values(n));
        let mut out = vec![0f32; n];
        let dims = AttnDims {
            batch: 1,
            seq_q: seq,
            seq_k: seq,
            heads,
            head_dim,
        };
        let call = || {
            attention_f32(kernel, &q, &k, &v, None, dims, 0.125, false, &mut out, 1);
            black_box(&out);
        };
        let best = time(Duration::from_secs(2), true, call);
        let flops = 4.0 * (seq * seq * heads * head_dim) as f64;
        println!("| {seq} | {:.3} | {:.1} |", best * 1e3, flops / best / 1e9);
    }
}
