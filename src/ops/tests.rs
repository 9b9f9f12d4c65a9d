//! Kernel tests on random inputs against the f64 reference.

use super::kernels::exp_neg;
use super::*;

/// xorshift64*, uniform in [-1, 1).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        x as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// The ops kernels of this architecture that this CPU runs. Reports each missing one once
/// (uncaptured stderr): `SKIPPED ops kernel <name>: this CPU lacks <features>`, and fails
/// when `ELECTRA_EDGE_REQUIRE_KERNELS` names it (`simd`, `avx512`, or `all`: every kernel
/// of this architecture).
pub(crate) fn kernels_here() -> Vec<OpsKernel> {
    static REPORT: std::sync::Once = std::sync::Once::new();
    let all = OpsKernel::of_this_arch();
    let (here, missing): (Vec<OpsKernel>, Vec<OpsKernel>) =
        all.iter().partition(|k| k.is_available());
    REPORT.call_once(|| {
        use std::io::Write;
        let mut msg = String::new();
        for k in &missing {
            msg += &format!(
                "SKIPPED ops kernel {}: this CPU lacks {}\n",
                k.name(),
                k.features()
            );
        }
        // io::stderr() directly: libtest captures eprintln! of passing tests, not this
        let _ = std::io::stderr().write_all(msg.as_bytes());
    });
    let required = std::env::var("ELECTRA_EDGE_REQUIRE_KERNELS").unwrap_or_default();
    for name in required.split(',').map(str::trim) {
        for k in &missing {
            let named = match k {
                OpsKernel::Simd => name == "simd",
                OpsKernel::Avx512 => name == "avx512",
                OpsKernel::Scalar => false,
            };
            assert!(
                !(named || name == "all"),
                "ELECTRA_EDGE_REQUIRE_KERNELS={required}: the ops kernel {} is required but \
                 this CPU lacks {}",
                k.name(),
                k.features()
            );
        }
    }
    here
}

/// Plain reference: the textbook formula, f64 accumulation, one head at a time.
pub(crate) fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<MaskView>,
    dims: AttnDims,
    scale: f32,
    nan_to_zero: bool,
) -> Vec<f32> {
    let AttnDims {
        batch,
        seq_q,
        seq_k,
        heads,
        head_dim: d,
    } = dims;
    let hd = heads * d;
    let mut out = vec![0f32; batch * seq_q * hd];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq_q {
                let mut x = vec![0f64; seq_k];
                for (j, x) in x.iter_mut().enumerate() {
                    let mut s = 0f64;
                    for dd in 0..d {
                        s += q[(b * seq_q + i) * hd + h * d + dd] as f64
                            * k[(b * seq_k + j) * hd + h * d + dd] as f64;
                    }
                    let a = mask.map_or(0.0, |m| m.data[b * m.sb + h * m.sh + i * m.si + j]);
                    *x = s * scale as f64 + a as f64;
                }
                let mx = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = x.iter().map(|&x| (x - mx).exp()).collect();
                let sum: f64 = p.iter().sum();
                for dd in 0..d {
                    let mut o = 0f64;
                    for j in 0..seq_k {
                        o += p[j] / sum * v[(b * seq_k + j) * hd + h * d + dd] as f64;
                    }
                    if o.is_nan() && nan_to_zero {
                        o = 0.0;
                    }
                    out[(b * seq_q + i) * hd + h * d + dd] = o as f32;
                }
            }
        }
    }
    out
}

#[test]
fn exp_neg_is_accurate() {
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x <= 0.0 {
        let want = (x as f64).exp();
        let got = exp_neg(x) as f64;
        worst = worst.max(((got - want) / want).abs());
        x += 0.0137;
    }
    assert!(worst < 4e-7, "relative error {worst}");
    assert!(exp_neg(f32::NEG_INFINITY) < 1.3e-38);
    assert_eq!(exp_neg(0.0), 1.0);
}

/// Every body's softmax `exp` (vector part and tails) to 4e-7 of `e^x` over the range the
/// softmax gives it, and 1.2e-38 or less for `-inf` (a masked key); their sum to 1e-6.
#[test]
fn body_exp_is_accurate() {
    use super::kernels::exp_sum_with;
    for kernel in kernels_here() {
        for len in [1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 64, 6371] {
            // x - mx over (-87, 0] (below ~-87.3 the bodies clamp): mx = 1, values up to 1
            let xs: Vec<f32> = (0..len)
                .map(|i| 1.0 - 87.0 * i as f32 / len as f32)
                .collect();
            let mut s = xs.clone();
            let sum = exp_sum_with(kernel, &mut s, 1.0);
            let mut want_sum = 0f64;
            for (x, got) in xs.iter().zip(&s) {
                let want = (*x as f64 - 1.0).exp();
                want_sum += want;
                let tol = if kernel == OpsKernel::Scalar {
                    2e-7
                } else {
                    4e-7
                };
                assert!(
                    ((*got as f64 - want) / want).abs() < tol,
                    "{} len {len}: exp({}) = {got}, want {want}",
                    kernel.name(),
                    x - 1.0
                );
            }
            assert!(
                ((sum as f64 - want_sum) / want_sum).abs() < 1e-6,
                "{} len {len}: sum {sum}, want {want_sum}",
                kernel.name()
            );
        }
        let mut s = vec![f32::NEG_INFINITY; 19];
        exp_sum_with(kernel, &mut s, 0.0);
        assert!(
            s.iter().all(|&e| (0.0..1.3e-38).contains(&e)),
            "{}: {s:?}",
            kernel.name()
        );
    }
}

/// Whether `got` and `want` hold the same bits, value for value (as long as the shorter).
fn same_bits(got: &[f32], want: &[f32]) -> bool {
    got.iter()
        .zip(want)
        .all(|(a, b)| a.to_bits() == b.to_bits())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() && y.is_nan() {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

#[test]
fn attention_matches_reference() {
    let mut rng = Rng::new(7);
    let cases = [
        // batch, seq_q, seq_k, heads, head_dim
        (1, 1, 1, 1, 1),
        (1, 3, 3, 2, 8),
        (1, 7, 7, 4, 64),
        (2, 5, 9, 3, 20),
        (1, 33, 33, 2, 32),
        (1, 130, 130, 4, 64),
        (1, 17, 40, 1, 16),
    ];
    for kernel in kernels_here() {
        for &(batch, seq_q, seq_k, heads, head_dim) in &cases {
            let dims = AttnDims {
                batch,
                seq_q,
                seq_k,
                heads,
                head_dim,
            };
            let hd = heads * head_dim;
            let q = rng.vec(batch * seq_q * hd, 2.0);
            let k = rng.vec(batch * seq_k * hd, 2.0);
            let v = rng.vec(batch * seq_k * hd, 1.0);
            let scale = 1.0 / (head_dim as f32).sqrt();
            // masks: none; [B,1,1,Sk] padding-style with -inf; full [B,H,Sq,Sk] finite
            let pad: Vec<f32> = (0..batch * seq_k)
                .map(|j| {
                    if j % seq_k > seq_k.div_ceil(2) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let full = rng.vec(batch * heads * seq_q * seq_k, 3.0);
            let masks: Vec<Option<MaskView>> = vec![
                None,
                Some(MaskView {
                    data: &pad,
                    sb: seq_k,
                    sh: 0,
                    si: 0,
                }),
                Some(MaskView {
                    data: &full,
                    sb: heads * seq_q * seq_k,
                    sh: seq_q * seq_k,
                    si: seq_k,
                }),
            ];
            for (mi, mask) in masks.into_iter().enumerate() {
                let want = attention_reference(&q, &k, &v, mask, dims, scale, true);
                for threads in [1, 2] {
                    let mut got = vec![f32::NAN; want.len()];
                    attention_f32(
                        kernel, &q, &k, &v, mask, dims, scale, true, &mut got, threads,
                    );
                    let d = max_diff(&want, &got);
                    assert!(
                        d <= 1e-5,
                        "{} {dims:?} mask {mi} threads {threads}: max |diff| {d}",
                        kernel.name()
                    );
                }
            }
        }
    }
}

/// Rows whose keys are all masked with -inf: zeros with the NaN guard, NaN without.
#[test]
fn fully_masked_rows() {
    let mut rng = Rng::new(11);
    let dims = AttnDims {
        batch: 1,
        seq_q: 3,
        seq_k: 5,
        heads: 2,
        head_dim: 4,
    };
    let (q, k, v) = (rng.vec(24, 1.0), rng.vec(40, 1.0), rng.vec(40, 1.0));
    // row 1 fully masked, the others not
    let mut m = vec![0f32; 15];
    m[5..10].fill(f32::NEG_INFINITY);
    let mask = Some(MaskView {
        data: &m,
        sb: 0,
        sh: 0,
        si: 5,
    });
    for kernel in kernels_here() {
        for guard in [true, false] {
            let want = attention_reference(&q, &k, &v, mask, dims, 0.5, guard);
            let mut got = vec![0f32; 24];
            attention_f32(kernel, &q, &k, &v, mask, dims, 0.5, guard, &mut got, 1);
            assert!(
                max_diff(&want, &got) <= 1e-6,
                "{} guard {guard}",
                kernel.name()
            );
            let row1 = &got[8..16];
            if guard {
                assert!(row1.iter().all(|&x| x == 0.0));
            } else {
                assert!(row1.iter().all(|x| x.is_nan()));
            }
            assert!(got[..8].iter().chain(&got[16..]).all(|x| x.is_finite()));
        }
    }
}

#[test]
fn add_layer_norm_matches_reference() {
    use super::kernels::add_layer_norm_f32;
    let mut rng = Rng::new(3);
    for kernel in kernels_here() {
        for (rows, n) in [(1, 1), (3, 7), (5, 64), (4, 256), (2, 300)] {
            let x = rng.vec(rows * n, 4.0);
            let r: Vec<f32> = rng.vec(rows * n, 2.0).iter().map(|v| v + 0.5).collect();
            let gamma = rng.vec(n, 1.5);
            let beta = rng.vec(n, 0.3);
            for (res, bias) in [(true, true), (false, true), (true, false)] {
                let mut y = vec![0f32; rows * n];
                add_layer_norm_f32(
                    kernel,
                    &x,
                    res.then_some(&r[..]),
                    &gamma,
                    bias.then_some(&beta[..]),
                    1e-12,
                    &mut y,
                    1,
                );
                for row in 0..rows {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            x[row * n + j] as f64 + if res { r[row * n + j] as f64 } else { 0.0 }
                        })
                        .collect();
                    let mean = s.iter().sum::<f64>() / n as f64;
                    let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
                    for j in 0..n {
                        let want = (s[j] - mean) / (var + 1e-12).sqrt() * gamma[j] as f64
                            + if bias { beta[j] as f64 } else { 0.0 };
                        let got = y[row * n + j] as f64;
                        assert!(
                            (want - got).abs() <= 1e-5 * want.abs().max(1.0),
                            "{} rows {rows} n {n} res {res} bias {bias}: {got} vs {want}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gelu_matches_erf_reference() {
    use super::kernels::gelu_f32;
    let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.004).collect();
    // erf from its Taylor series (|x| <= 8 / sqrt 2 needs many terms; f64 is enough)
    fn erf64(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut k) = (x, x, 0f64);
        while term.abs() > 1e-17 {
            k += 1.0;
            term *= -x * x / k;
            sum += term / (2.0 * k + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
    for kernel in kernels_here() {
        let mut y = xs.clone();
        gelu_f32(kernel, &mut y, std::f32::consts::SQRT_2, 1);
        for (x, y) in xs.iter().zip(&y) {
            let x64 = *x as f64;
            let want = x64 * (erf64(x64 / std::f64::consts::SQRT_2) + 1.0) * 0.5;
            assert!(
                (want - *y as f64).abs() <= 2e-6 * want.abs().max(1.0),
                "{} gelu({x}) = {y}, want {want}",
                kernel.name()
            );
        }
    }
}

/// LayerNorm split by ranges of rows: the same bits on 1, 2, 3 and 5 threads (odd widths,
/// fewer rows than threads, with and without the residual and beta).
#[test]
fn add_layer_norm_is_the_same_on_any_threads() {
    use super::kernels::add_layer_norm_f32;
    let mut rng = Rng::new(11);
    for kernel in kernels_here() {
        for (rows, n) in [(1, 1), (2, 7), (3, 64), (5, 300), (17, 256), (40, 33)] {
            let x = rng.vec(rows * n, 4.0);
            let r = rng.vec(rows * n, 2.0);
            let gamma = rng.vec(n, 1.5);
            let beta = rng.vec(n, 0.3);
            for (res, bias) in [(true, true), (false, true), (true, false)] {
                let run = |threads: usize| {
                    let mut y = vec![f32::NAN; rows * n];
                    add_layer_norm_f32(
                        kernel,
                        &x,
                        res.then_some(&r[..]),
                        &gamma,
                        bias.then_some(&beta[..]),
                        1e-12,
                        &mut y,
                        threads,
                    );
                    y
                };
                let want = run(1);
                assert!(want.iter().all(|v| v.is_finite()));
                for threads in [2, 3, 5] {
                    let got = run(threads);
                    assert!(
                        same_bits(&got, &want),
                        "{} rows {rows} n {n} res {res} bias {bias} x{threads}",
                        kernel.name()
                    );
                }
            }
        }
    }
}

/// GELU split in chunks: the same bits on 1, 2, 3 and 5 threads, odd lengths included.
#[test]
fn gelu_is_the_same_on_any_threads() {
    use super::kernels::gelu_f32;
    let mut rng = Rng::new(12);
    for kernel in kernels_here() {
        for len in [0, 1, 63, 65, 1000, 4097] {
            let x = rng.vec(len, 5.0);
            let mut want = x.clone();
            gelu_f32(kernel, &mut want, std::f32::consts::SQRT_2, 1);
            assert!(len == 0 || want.iter().zip(&x).any(|(g, x)| g != x));
            for threads in [2, 3, 5] {
                let mut got = x.clone();
                gelu_f32(kernel, &mut got, std::f32::consts::SQRT_2, threads);
                assert!(
                    same_bits(&got, &want),
                    "{} len {len} x{threads}",
                    kernel.name()
                );
            }
        }
    }
}

/// Every LayerNorm kernel here gives the scalar reference's bits (the SIMD bodies keep its
/// operations and their order), odd widths and tails included.
#[test]
fn add_layer_norm_kernels_give_the_scalar_bits() {
    use super::kernels::add_layer_norm_f32;
    let mut rng = Rng::new(21);
    for kernel in kernels_here() {
        for (rows, n) in [
            (1, 1),
            (2, 7),
            (3, 8),
            (2, 15),
            (3, 16),
            (2, 23),
            (4, 256),
            (2, 300),
        ] {
            let x = rng.vec(rows * n, 4.0);
            let r = rng.vec(rows * n, 2.0);
            let gamma = rng.vec(n, 1.5);
            let beta = rng.vec(n, 0.3);
            for (res, bias) in [(true, true), (false, true), (true, false), (false, false)] {
                let run = |kernel| {
                    let mut y = vec![f32::NAN; rows * n];
                    add_layer_norm_f32(
                        kernel,
                        &x,
                        res.then_some(&r[..]),
                        &gamma,
                        bias.then_some(&beta[..]),
                        1e-12,
                        &mut y,
                        1,
                    );
                    y
                };
                let (want, got) = (run(OpsKernel::Scalar), run(kernel));
                assert!(want.iter().all(|v| v.is_finite()));
                assert!(
                    same_bits(&got, &want),
                    "{} rows {rows} n {n} res {res} bias {bias}",
                    kernel.name()
                );
            }
        }
    }
}

/// Every GELU kernel here gives the scalar reference's bits, every length up to 40 (the
/// vector bodies' tails) and a long one, over the whole useful range.
#[test]
fn gelu_kernels_give_the_scalar_bits() {
    use super::kernels::gelu_f32;
    let mut rng = Rng::new(22);
    let div = std::f32::consts::SQRT_2;
    for kernel in kernels_here() {
        for len in (0..=40).chain([4099]) {
            let x = rng.vec(len, 8.0);
            let (mut want, mut got) = (x.clone(), x.clone());
            gelu_f32(OpsKernel::Scalar, &mut want, div, 1);
            gelu_f32(kernel, &mut got, div, 1);
            assert!(same_bits(&got, &want), "{} len {len}", kernel.name());
        }
    }
}

/// A NaN score (here from a NaN in one key, first or last: the vector part or the tail of
/// every body's softmax) makes every row NaN, with or without the guard, on every kernel.
#[test]
fn nan_scores_give_nan_rows() {
    let mut rng = Rng::new(23);
    let dims = AttnDims {
        batch: 1,
        seq_q: 3,
        seq_k: 37,
        heads: 1,
        head_dim: 8,
    };
    let (q, v) = (rng.vec(24, 1.0), rng.vec(37 * 8, 1.0));
    for kernel in kernels_here() {
        for key in [0, 17, 36] {
            let mut k = rng.vec(37 * 8, 1.0);
            k[key * 8 + 3] = f32::NAN;
            for guard in [true, false] {
                let mut got = vec![0f32; 24];
                attention_f32(kernel, &q, &k, &v, None, dims, 0.5, guard, &mut got, 1);
                assert!(
                    got.iter().all(|x| x.is_nan()),
                    "{} key {key} guard {guard}: {got:?}",
                    kernel.name()
                );
            }
        }
    }
}
