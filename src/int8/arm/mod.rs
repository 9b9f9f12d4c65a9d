//! aarch64 kernels: micro-tiles and quantize primitives for NEON (Cortex-A72), dotprod
//! (Cortex-A76 and later) and i8mm, and the NEON epilogue the driver uses on every aarch64
//! kernel. Activations are packed as i8 `a - 128` (`a ^ 0x80`) for the NEON and dotprod tiles
//! (the driver adds `(128 - za) * colsum[n]` back exactly) and as u8 for i8mm.
//!
//! * [`neon`]: 4 x 8, `smull` (+ `smlal` when no weight is -128) + `sadalp`;
//! * [`dot`]: 12 x 8 `sdot` by element, and 8 x 8 `usmmla`;
//! * [`quant`]: min/max, quantize, quantize straight into the packed layout;
//! * [`store`]: the f32 epilogue.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

/// Assembly of a tile's fused epilogue ([`crate::int8::layout::DirectOut`]): loads of the
/// panel's `colterm`, `scale` and `bias` into v24-v29.
#[rustfmt::skip]
macro_rules! epi_load {
    () => {
        concat!(
            "ld1 {{v24.4s, v25.4s}}, [{ct}]\n",
            "ld1 {{v26.4s, v27.4s}}, [{sc}]\n",
            "ld1 {{v28.4s, v29.4s}}, [{bi}]\n",
        )
    };
}

/// Assembly of a tile's fused epilogue for one row whose 8 raw sums are in `$lo` (columns
/// 0-3) and `$hi` (4-7): add `colterm`, convert, multiply by `scale`, add `bias` (two
/// roundings, as the driver's store), store the row and move `y` one row on.
#[rustfmt::skip]
macro_rules! epi_row {
    ($lo:literal, $hi:literal) => {
        concat!(
            "add ", $lo, ".4s, ", $lo, ".4s, v24.4s\n",
            "add ", $hi, ".4s, ", $hi, ".4s, v25.4s\n",
            "scvtf ", $lo, ".4s, ", $lo, ".4s\n",
            "scvtf ", $hi, ".4s, ", $hi, ".4s\n",
            "fmul ", $lo, ".4s, ", $lo, ".4s, v26.4s\n",
            "fmul ", $hi, ".4s, ", $hi, ".4s, v27.4s\n",
            "fadd ", $lo, ".4s, ", $lo, ".4s, v28.4s\n",
            "fadd ", $hi, ".4s, ", $hi, ".4s, v29.4s\n",
            "st1 {{", $lo, ".4s, ", $hi, ".4s}}, [{y}], {ldy}\n",
        )
    };
}

pub(crate) mod dot;
pub(crate) mod neon;
pub(crate) mod quant;
pub(crate) mod store;

pub(crate) use dot::{tile_dotprod, tile_dotprod_direct, tile_i8mm, MR_DOT, MR_I8MM};
pub(crate) use neon::{tile_neon, tile_neon_direct, MR as MR_NEON};
pub(crate) use quant::{min_max_neon, quantize_neon, quantize_rows_i8};
pub(crate) use store::store_f32;
