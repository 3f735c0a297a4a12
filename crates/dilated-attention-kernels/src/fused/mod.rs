//! The fused CubeCL kernels and their launchers (feature `cubecl`), one folder per kernel
//! family.
//!
//! | family | runs where | dtypes | head dim | why |
//! | --- | --- | --- | --- | --- |
//! | [`mma`] (register-resident) | CUDA, Ampere and later (manual MMA, `ldmatrix`, `cp.async`, 32-unit planes) | `f16`, `bf16` (m16n8k16); `f32` on TF32 m16n8k8, three products each unless `allow_tf32` | multiple of 16, up to 128 | scores and accumulators in registers: the fastest |
//! | [`cmma`] | CUDA, Volta and later (`cmma` 16x16x16, 32-unit planes) where `mma` cannot run | `f16`, `bf16` | multiple of 16, up to 128 | tensor cores through opaque fragments |
//! | [`portable`] | every CubeCL runtime: CUDA, WGPU (Vulkan, Metal, DX12, lavapipe) | every float dtype (`f32` arithmetic) | up to 256 | scalar FMAs; WGSL has no `cmma`, and SPIR-V `cmma` crashed NVIDIA's Vulkan driver |
//! | reference path (core) | every backend | every float dtype | any | dropout while training, head dim above 256, more than 65,535 heads, 2^32 elements or more in one batch row (a larger batch runs in chunks, `batch_chunks.rs`) |
//!
//! [`strategy::select`] picks the family of a call (the config's `kernel_strategy`, or the
//! `DILATED_ATTENTION_KERNEL` override): `Auto` takes the first row of the table that can run
//! the call; a forced family that cannot is an error. What the families share:
//! - [`call`]: the per-call state (checked shape, launch table, order) and layout helpers;
//! - [`kernel_args`]: the kernels' runtime arguments as structs (inputs, row plan, backward rows);
//! - [`launch_plan`]: the table of pairs and head offsets, and the grid;
//! - [`rows`], [`tiles`], [`tile_walk`]: rows of a cube, shared-memory tiles, the key-tile walk;
//! - [`tensor_core`]: the cube shape, padding, masked-key score and key bias of `cmma` and `mma`;
//! - [`delta`]: the backward's first pass;
//! - [`forward`], [`backward`]: allocation and the launch of the chosen family.

pub(crate) mod backward;
pub(crate) mod call;
pub(crate) mod cmma;
pub(crate) mod delta;
pub(crate) mod forward;
pub(crate) mod kernel_args;
pub(crate) mod launch_plan;
pub(crate) mod mma;
pub(crate) mod portable;
pub(crate) mod rows;
pub(crate) mod strategy;
pub(crate) mod tensor_core;
pub(crate) mod tile_walk;
pub(crate) mod tiles;
