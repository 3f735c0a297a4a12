//! The fused CubeCL kernels and their launchers (feature `cubecl`).
//!
//! - [`launch_plan`]: the table of pairs and head offsets, and the grid;
//! - [`forward`]: the flash-attention forward over dilated rows (portable variant);
//! - [`forward_tensor_core`]: the same on tensor cores (`cmma`, plane shuffles);
//! - [`forward_mma`]: the same with scores and probabilities in registers (`mma.sync`, `ldmatrix`);
//! - [`backward`]: the portable backward (`delta`, `dQ`, `dK`/`dV`);
//! - [`backward_query_tensor_core`], [`backward_key_value_tensor_core`]: `dQ` and `dK`/`dV` on
//!   tensor cores;
//! - [`fragments`], [`mma_tiles`], [`tile_walk`], [`rows`], [`tiles`]: what the kernels share;
//! - [`launch`]: checks, tile sizes and allocation around the launches.

pub(crate) mod backward;
pub(crate) mod backward_key_value_mma;
pub(crate) mod backward_key_value_tensor_core;
pub(crate) mod backward_query_mma;
pub(crate) mod backward_query_tensor_core;
#[cfg(feature = "cuda")]
pub(crate) mod compile_options;
pub(crate) mod forward;
pub(crate) mod forward_mma;
pub(crate) mod forward_tensor_core;
pub(crate) mod fragments;
pub(crate) mod launch;
pub(crate) mod launch_plan;
pub(crate) mod mma_operands;
pub(crate) mod mma_tiles;
pub(crate) mod rows;
pub(crate) mod tf32_tiles;
pub(crate) mod tile_walk;
pub(crate) mod tiles;
