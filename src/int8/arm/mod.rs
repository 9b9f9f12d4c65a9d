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

pub(crate) mod dot;
pub(crate) mod neon;
pub(crate) mod quant;
pub(crate) mod store;

pub(crate) use dot::{tile_dotprod, tile_i8mm, MR_DOT, MR_I8MM};
pub(crate) use neon::{tile_neon, MR as MR_NEON};
pub(crate) use quant::{min_max_neon, quantize_neon, quantize_rows_i8};
pub(crate) use store::store_f32;
