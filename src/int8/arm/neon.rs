//! The NEON tile for cores without dotprod (Cortex-A72, Raspberry Pi 4): 4 rows x 8 columns
//! of i8 activations (`a - 128`, the I8Shifted layout `[q][r][4]`) times the packed i8
//! weights.
//!
//! NEON has no 8-bit multiply by element, so each row's k-quad is replicated over a register:
//! one `ld4r` reads the quad of all 4 rows of the block and replicates each into its own
//! register. A 16-byte weight register holds 2 columns x 4 k (low half) and 2 more (high
//! half), so `smull` / `smull2` (i8 x i8 -> i16) give 8 products of 2 columns, and `sadalp`
//! adds neighbouring pairs into 4 i32 partial sums (`[c, c, c+1, c+1]`, folded by `addp` at
//! the end). 16 accumulators (4 rows x 4 column pairs).
//!
//! Per pair of k-quads (8 k) the weights are 64 bytes (one `ld1` of 4 registers) and the
//! activations two `ld4r`. With `PAIRED`, the two quads' products share the i16 lanes
//! (`smull` on quad q, then `smlal` on quad q + 1) and one `sadalp` takes both: 3 instructions
//! per 16 multiply-adds instead of 4. That is exact only when no weight is -128: a lane then
//! holds at most 2 * 128 * 127 = 32512 in magnitude, while (-128) * (-128) twice would be 32768,
//! past i16. The packer records whether a matrix holds -128 ([`crate::int8::PackedWeights`]);
//! matrices that do take the unpaired path (`smull` + `sadalp` per quad), exact for any i8.
//!
//! The tile is one block of inline assembly with fixed registers (accumulators v0-v15,
//! weights v16-v19, activations v20-v27, products v28-v31): written with intrinsics, LLVM
//! hoisted the multiplies of all rows ahead of their `sadalp` and spilled accumulators to the
//! stack in every iteration (a dozen loads and stores per 48 multiplies). Per pair of quads
//! the loop is 1 `ld1` + 2 `ld4r` + 48 (paired) or 64 multiply/accumulate instructions +
//! `subs` + `b.ne` (two pairs per iteration: 1 + 2 + 48 + 1 per pair). The first pair starts
//! the accumulators with `saddlp` (no zeroing). It always computes the block's 4 rows (a
//! short last block is padded).

use std::arch::asm;

use crate::int8::layout::{DirectOut, TILE_STRIDE};

/// Rows of the NEON tile (and of its packed-A blocks).
pub(crate) const MR: usize = 4;

/// The multiply-accumulate instructions of one row for a pair of quads: the row's
/// activations `$x0` (quad q) and `$x1` (quad q + 1), its accumulators `$a0..$a3` (column
/// pairs 0-1, 2-3, 4-5, 6-7); weights v16-v19, products v28-v31. `$acc` is `sadalp`, or
/// `saddlp` for the first products (the accumulators start from them: no zeroing).
#[rustfmt::skip]
macro_rules! row_paired {
    ($acc:literal, $x0:literal, $x1:literal, $a0:literal, $a1:literal, $a2:literal, $a3:literal) => {
        concat!(
            "smull  v28.8h, v16.8b,  ", $x0, ".8b\n",
            "smull2 v29.8h, v16.16b, ", $x0, ".16b\n",
            "smull  v30.8h, v17.8b,  ", $x0, ".8b\n",
            "smull2 v31.8h, v17.16b, ", $x0, ".16b\n",
            "smlal  v28.8h, v18.8b,  ", $x1, ".8b\n",
            "smlal2 v29.8h, v18.16b, ", $x1, ".16b\n",
            "smlal  v30.8h, v19.8b,  ", $x1, ".8b\n",
            "smlal2 v31.8h, v19.16b, ", $x1, ".16b\n",
            $acc, " ", $a0, ".4s, v28.8h\n",
            $acc, " ", $a1, ".4s, v29.8h\n",
            $acc, " ", $a2, ".4s, v30.8h\n",
            $acc, " ", $a3, ".4s, v31.8h\n",
        )
    };
}

/// As [`row_paired`] for one quad, every product widened on its own (any i8 weight); `$wl`,
/// `$wh`: the quad's weight registers (cols 0-3, 4-7), `$x`: the row's quad.
#[rustfmt::skip]
macro_rules! row_quad {
    ($acc:literal, $wl:literal, $wh:literal, $x:literal,
     $a0:literal, $a1:literal, $a2:literal, $a3:literal) => {
        concat!(
            "smull  v28.8h, ", $wl, ".8b,  ", $x, ".8b\n",
            "smull2 v29.8h, ", $wl, ".16b, ", $x, ".16b\n",
            "smull  v30.8h, ", $wh, ".8b,  ", $x, ".8b\n",
            "smull2 v31.8h, ", $wh, ".16b, ", $x, ".16b\n",
            $acc, " ", $a0, ".4s, v28.8h\n",
            $acc, " ", $a1, ".4s, v29.8h\n",
            $acc, " ", $a2, ".4s, v30.8h\n",
            $acc, " ", $a3, ".4s, v31.8h\n",
        )
    };
}

/// The 4 rows of one pair of quads (weights and activations loaded).
macro_rules! pair_paired {
    ($acc:literal) => {
        concat!(
            row_paired!($acc, "v20", "v24", "v0", "v1", "v2", "v3"),
            row_paired!($acc, "v21", "v25", "v4", "v5", "v6", "v7"),
            row_paired!($acc, "v22", "v26", "v8", "v9", "v10", "v11"),
            row_paired!($acc, "v23", "v27", "v12", "v13", "v14", "v15"),
        )
    };
}

/// The 4 rows of one quad whose weights are `$wl`, `$wh` and activations `$x0..$x3`.
macro_rules! quad_rows {
    ($acc:literal, $wl:literal, $wh:literal, $x0:literal, $x1:literal, $x2:literal,
     $x3:literal) => {
        concat!(
            row_quad!($acc, $wl, $wh, $x0, "v0", "v1", "v2", "v3"),
            row_quad!($acc, $wl, $wh, $x1, "v4", "v5", "v6", "v7"),
            row_quad!($acc, $wl, $wh, $x2, "v8", "v9", "v10", "v11"),
            row_quad!($acc, $wl, $wh, $x3, "v12", "v13", "v14", "v15"),
        )
    };
}

/// The loads of one pair of quads: 64 bytes of weights (v16-v19), the block's 4 rows of
/// quads q (v20-v23) and q + 1 (v24-v27), each replicated.
macro_rules! pair_loads {
    () => {
        concat!(
            "ld1 {{v16.16b, v17.16b, v18.16b, v19.16b}}, [{w}], #64\n",
            "ld4r {{v20.4s, v21.4s, v22.4s, v23.4s}}, [{a}], #16\n",
            "ld4r {{v24.4s, v25.4s, v26.4s, v27.4s}}, [{a}], #16\n",
        )
    };
}

/// The whole tile: the first pair of quads starts the accumulators (`$pair!("saddlp")`; no
/// pair: zeroed), then the others, two per loop iteration (`$pair!("sadalp")`), an odd last
/// quad, the pairwise folds (row r's sums into v{16+2r}, v{17+2r}), then `$tail` with the
/// operands `$ops` (the stores).
macro_rules! tile_asm {
    ($pair:ident, $tail:expr, $a:ident, $w:ident, $kq:ident, $($ops:tt)*) => {{
        let (pairs, odd) = ($kq / 2, $kq % 2);
        asm!(
            "cbz {pairs}, 8f",
            pair_loads!(),
            $pair!("saddlp"),
            "subs {pairs}, {pairs}, #1",
            "b.eq 2f",
            "tbz {pairs}, #0, 1f",
            pair_loads!(),
            $pair!("sadalp"),
            "subs {pairs}, {pairs}, #1",
            "b.eq 2f",
            "1:",
            pair_loads!(),
            $pair!("sadalp"),
            pair_loads!(),
            $pair!("sadalp"),
            "subs {pairs}, {pairs}, #2",
            "b.ne 1b",
            "b 2f",
            "8:",
            "movi v0.4s, #0", "movi v1.4s, #0", "movi v2.4s, #0", "movi v3.4s, #0",
            "movi v4.4s, #0", "movi v5.4s, #0", "movi v6.4s, #0", "movi v7.4s, #0",
            "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
            "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
            "2:",
            "cbz {odd}, 3f",
            "ld1 {{v16.16b, v17.16b}}, [{w}]",
            "ld4r {{v20.4s, v21.4s, v22.4s, v23.4s}}, [{a}]",
            quad_rows!("sadalp", "v16", "v17", "v20", "v21", "v22", "v23"),
            "3:",
            "addp v16.4s, v0.4s, v1.4s",
            "addp v17.4s, v2.4s, v3.4s",
            "addp v18.4s, v4.4s, v5.4s",
            "addp v19.4s, v6.4s, v7.4s",
            "addp v20.4s, v8.4s, v9.4s",
            "addp v21.4s, v10.4s, v11.4s",
            "addp v22.4s, v12.4s, v13.4s",
            "addp v23.4s, v14.4s, v15.4s",
            $tail,
            a = inout(reg) $a => _,
            w = inout(reg) $w => _,
            pairs = inout(reg) pairs => _,
            odd = in(reg) odd,
            $($ops)*
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack)
        )
    }};
}

/// The tile's end into the driver's buffer: 4 rows of 8 raw sums.
macro_rules! buffer_tail {
    () => {
        concat!(
            "stp q16, q17, [{out}]\n",
            "stp q18, q19, [{out}, #{row}]\n",
            "stp q20, q21, [{out}, #{row2}]\n",
            "stp q22, q23, [{out}, #{row3}]\n",
        )
    };
}

/// The tile's end with the fused epilogue: 4 rows of 8 f32 outputs.
macro_rules! direct_tail {
    () => {
        concat!(
            epi_load!(),
            epi_row!("v16", "v17"),
            epi_row!("v18", "v19"),
            epi_row!("v20", "v21"),
            epi_row!("v22", "v23"),
        )
    };
}

/// The unpaired loop body: quad q (weights v16-v17, activations v20-v23), then quad q + 1
/// (v18-v19, v24-v27).
macro_rules! pair_unpaired {
    ($acc:literal) => {
        concat!(
            quad_rows!($acc, "v16", "v17", "v20", "v21", "v22", "v23"),
            quad_rows!("sadalp", "v18", "v19", "v24", "v25", "v26", "v27"),
        )
    };
}

/// The 4 rows x 8 columns of raw sums of one block and one panel (see
/// [`crate::int8::layout`] for the contract; a short last block's padding rows are computed
/// too, into the tile buffer's rows the driver does not read).
///
/// # Safety
/// The CPU must have NEON; `a` must hold one packed block (`kq * 16` bytes), `w` one panel
/// (`kq * 32` bytes), `out` 4 rows of `TILE_STRIDE` writable i32; with `PAIRED`, no weight of
/// the panel may be -128.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn tile_neon<const PAIRED: bool>(
    a: *const u8,
    w: *const u8,
    kq: usize,
    out: *mut i32,
) {
    // SAFETY: NEON is there (caller). The assembly reads 32 bytes of A and 64 of W per pair
    // of quads, then 16 and 32 for an odd last quad: kq * 16 and kq * 32 bytes, the block and
    // the panel the caller guarantees (`ld1` / `ld4r` need no alignment); it writes 4 rows of
    // 8 i32 at `out + r * TILE_STRIDE`, inside the tile buffer; it touches no other memory,
    // and every vector register it uses is declared clobbered.
    unsafe {
        macro_rules! with {
            ($pair:ident) => {
                tile_asm!(
                    $pair, buffer_tail!(), a, w, kq,
                    out = in(reg) out,
                    row = const 4 * TILE_STRIDE,
                    row2 = const 8 * TILE_STRIDE,
                    row3 = const 12 * TILE_STRIDE,
                )
            };
        }
        if PAIRED {
            with!(pair_paired)
        } else {
            with!(pair_unpaired)
        }
    }
}

/// The tile with the f32 epilogue applied in registers and stored to the output
/// ([`DirectOut`]): for whole tiles of weights whose zero points are all 0.
///
/// # Safety
/// As [`tile_neon`] for `a`, `w`, `kq`; `d` must point at 8 values of `colterm`, `scale` and
/// `bias`, and `d.y + r * d.ldy` at 8 writable f32 for each of the 4 rows.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn tile_neon_direct<const PAIRED: bool>(
    a: *const u8,
    w: *const u8,
    kq: usize,
    d: &DirectOut,
) {
    // SAFETY: NEON is there (caller); the reads of A and W as in `tile_neon`, the reads of
    // the 3 vectors of 8 values and the 4 rows of 8 f32 written at `y + r * ldy` as the
    // caller guarantees; no other memory; every vector register used is declared clobbered.
    unsafe {
        macro_rules! with {
            ($pair:ident) => {
                tile_asm!(
                    $pair, direct_tail!(), a, w, kq,
                    ct = in(reg) d.colterm,
                    sc = in(reg) d.scale,
                    bi = in(reg) d.bias,
                    y = inout(reg) d.y => _,
                    ldy = in(reg) d.ldy * 4,
                )
            };
        }
        if PAIRED {
            with!(pair_paired)
        } else {
            with!(pair_unpaired)
        }
    }
}
