//! Throughput of the int8 kernels vs a plain f32 baseline, in GMAC/s.
//!
//! `cargo bench --bench int8_kernels [-- --threads N] [--kernels scalar,avx2,...] [--quick] [--wall]`
//!
//! Kernels this CPU lacks are listed as not measured. With `--threads N` (N > 1) the matmuls
//! are split over the persistent thread pool (`electra_edge::int8::pool`) and timed in wall
//! time.
//!
//! Columns per shape (M x K x N):
//! - `gemm`: `qgemm_f32` on already quantized activations (A packing, integer GEMM, epilogue);
//! - `op`: `quantized_matmul_f32` (the whole fused op: DynamicQuantizeLinear + gemm);
//! - `f32`: a straightforward register-blocked f32 loop (AVX2+FMA on x86-64 when available,
//!   otherwise portable Rust), same shape, as a reference point only (tract's f32 kernel is
//!   faster: measure the model, not this).

use electra_edge::int8::{pack_weights, qgemm_f32, quantized_matmul_f32, Kernel};
use std::hint::black_box;
use std::time::Duration;

#[path = "../src/testutil.rs"]
mod testutil;
use testutil::XorShift;
#[path = "common/timing.rs"]
mod timing;
use timing::time;

/// `y = x * w` f32, `x [M,K]`, `w [K,N]`: 4 rows x 16 columns blocks, k inner.
#[inline(always)]
fn f32_tiles(x: &[f32], w: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    const MR: usize = 4;
    const NB: usize = 16;
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MR);
        let mut j = 0;
        while j < n {
            let cols = (n - j).min(NB);
            let mut acc = [[0f32; NB]; MR];
            if cols == NB && rows == MR {
                for kk in 0..k {
                    let wr: &[f32; NB] = w[kk * n + j..kk * n + j + NB].try_into().unwrap();
                    for r in 0..MR {
                        let a = x[(i + r) * k + kk];
                        for c in 0..NB {
                            acc[r][c] = a.mul_add(wr[c], acc[r][c]);
                        }
                    }
                }
            } else {
                for kk in 0..k {
                    for r in 0..rows {
                        let a = x[(i + r) * k + kk];
                        for c in 0..cols {
                            acc[r][c] = a.mul_add(w[kk * n + j + c], acc[r][c]);
                        }
                    }
                }
            }
            for r in 0..rows {
                y[(i + r) * n + j..(i + r) * n + j + cols].copy_from_slice(&acc[r][..cols]);
            }
            j += NB;
        }
        i += MR;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_tiles_avx2(x: &[f32], w: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    f32_tiles(x, w, y, m, k, n)
}

fn f32_matmul(x: &[f32], w: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: avx2 and fma were detected just above.
        return unsafe { f32_tiles_avx2(x, w, y, m, k, n) };
    }
    f32_tiles(x, w, y, m, k, n)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let threads: usize = arg("--threads").and_then(|v| v.parse().ok()).unwrap_or(1);
    let quick = args.iter().any(|a| a == "--quick");
    let kernels: Vec<Kernel> = match arg("--kernels") {
        Some(list) => list
            .split(',')
            .filter_map(Kernel::parse)
            .filter(|k| k.is_available())
            .collect(),
        None => Kernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .collect(),
    };
    // one thread: CPU time of this thread (robust on a busy host); more: wall time
    let cpu = threads == 1 && !args.iter().any(|a| a == "--wall");
    let budget = Duration::from_millis(if quick { 60 } else { 300 });
    let missing: Vec<String> = Kernel::ALL
        .into_iter()
        .filter(|k| !k.is_available())
        .map(|k| format!("{k} ({})", k.features()))
        .collect();
    if !missing.is_empty() {
        println!("not measured (this CPU lacks them): {}", missing.join(", "));
    }
    let mut shapes = vec![];
    for m in [8, 32, 128, 512] {
        for n in [256, 1024] {
            shapes.push((m, 256, n));
        }
        shapes.push((m, 1024, 256));
    }
    println!(
        "int8 kernels vs f32, threads = {threads}, default kernel = {}, timing = {}",
        Kernel::default_choice(),
        if cpu {
            "thread CPU time, best of"
        } else {
            "wall time, best of"
        }
    );
    println!(
        "{:>16} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "M x K x N", "kernel", "gemm GMAC/s", "op GMAC/s", "op us", "f32 GMAC/s"
    );
    let mut rng = XorShift::new(0x2545F4914F6CDD1D);
    for (m, k, n) in shapes {
        let macs = (m * k * n) as f64;
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32(-1.0, 1.0) * 3.0).collect();
        let wf: Vec<f32> = (0..k * n).map(|_| rng.f32(-1.0, 1.0) * 0.05).collect();
        let w8: Vec<u8> = wf
            .iter()
            .map(|v| ((v / 0.05 * 127.0).round() as i8) as u8)
            .collect();
        let packed = pack_weights(&w8, true, k, n, &[]);
        let sw = vec![0.05f32 / 127.0; n];
        let bias = vec![0.01f32; n];
        let mut y = vec![0f32; m * n];
        let tf = time(budget, cpu, || {
            f32_matmul(black_box(&x), black_box(&wf), &mut y, m, k, n)
        });
        for &kernel in &kernels {
            if kernel == Kernel::Scalar && macs > 40e6 && !args.iter().any(|a| a == "--scalar-all")
            {
                continue;
            }
            let mut q = vec![0u8; m * k];
            let p = electra_edge::int8::dynamic_quantize_linear_with(kernel, &x, &mut q);
            let tg = time(budget, cpu, || {
                qgemm_f32(
                    kernel,
                    black_box(&q),
                    m,
                    p.zero_point,
                    p.scale,
                    &packed,
                    &sw,
                    Some(&bias),
                    &mut y,
                    threads,
                )
            });
            let to = time(budget, cpu, || {
                quantized_matmul_f32(
                    kernel,
                    black_box(&x),
                    m,
                    &packed,
                    &sw,
                    Some(&bias),
                    &mut y,
                    threads,
                );
            });
            println!(
                "{:>16} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                format!("{m}x{k}x{n}"),
                kernel.name(),
                macs / tg / 1e9,
                macs / to / 1e9,
                to * 1e6,
                macs / tf / 1e9
            );
        }
    }
}
