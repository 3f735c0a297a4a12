//! The register-resident family: scores, probabilities and accumulators stay in registers;
//! `Q K^T` and `P V` run on `mma.sync` through CubeCL's manual MMA with operands loaded by
//! `ldmatrix`, and walked tiles are copied one ahead by `cp.async`. `f16`/`bf16` inputs use
//! m16n8k16; `f32` inputs use TF32 m16n8k8, each product split into three TF32 products for
//! about `f32` accuracy unless the config's `allow_tf32` keeps one. Needs a head dimension that
//! is a multiple of 16 up to 128, 32-unit planes with plane operations, the manual MMA for the
//! dtype and `cp.async` (CUDA on Ampere and later).
//!
//! - [`forward`], [`backward_query`], [`backward_key_value`]: the forward, `dQ` and `dK`/`dV`;
//! - [`tiles`]: the m16n8k16 tile products, masks and stores the three share;
//! - [`staging`]: the `cp.async` copies of walked tiles and the rows they read;
//! - [`operands`]: the operand staging common to halves and TF32;
//! - [`tf32`]: the TF32 products and their key permutation;
//! - `compile_options` (feature `nvrtc-options`): the per-kernel NVRTC options.

mod backward_key_value;
mod backward_query;
#[cfg(feature = "nvrtc-options")]
pub(crate) mod compile_options;
mod forward;
mod operands;
mod staging;
mod tf32;
mod tiles;

use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::tensor::CubeTensor;
use dilated_attention_core::Result;

use self::backward_key_value::dilated_flash_backward_key_value_mma;
use self::backward_query::dilated_flash_backward_query_mma;
use self::forward::dilated_flash_forward_mma;
use super::call::Call;
use super::kernel_args::{attention_inputs, backward_rows};
use super::strategy::{MmaInputs, SHARED_MEMORY_BUDGET, two_stages_bytes};
use super::tensor_core::TENSOR_CORE_PLANES;

/// The comptime settings of a register-resident kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MmaBlueprint {
    /// Rows per walked tile: keys (forward, `dQ`) or queries (`dK`/`dV`).
    pub tile: usize,
    /// Walked tiles per shared-memory stage (`dK`/`dV`; 1 elsewhere).
    pub sub_tiles: usize,
    /// Values per row, a multiple of 16.
    pub head_dim: usize,
    /// Keys after the query are hidden.
    pub causal: bool,
    /// The call has a key padding mask.
    pub has_padding: bool,
    /// Rows are read and written through the call's sequence order.
    pub ordered: bool,
    /// `f32` inputs on TF32 m16n8k8 (else `f16`/`bf16` on m16n8k16).
    pub tf32: bool,
    /// Each TF32 product split into three (about `f32` accuracy).
    pub split: bool,
}

impl MmaBlueprint {
    fn of<R: CubeRuntime>(
        call: &Call<R>,
        tile: usize,
        sub_tiles: usize,
        inputs: MmaInputs,
    ) -> Self {
        Self {
            tile,
            sub_tiles,
            head_dim: call.shape.head_dim,
            causal: call.causal,
            has_padding: call.has_padding,
            ordered: call.ordered(),
            tf32: inputs.tf32,
            split: inputs.split,
        }
    }
}

/// Launches the register-resident forward (walked key tiles of `key_tile`) into `output` and
/// `lse`.
///
/// # Safety
/// The device has what `inputs` needs (checked by the strategy's `mma` probe).
///
/// # Errors
/// [`DilatedAttentionError::KernelUnavailable`] when the device's loads are too narrow.
pub(crate) unsafe fn launch_forward<R: CubeRuntime>(
    call: &Call<R>,
    inputs: [CubeTensor<R>; 3],
    padding: CubeTensor<R>,
    [output, lse]: [&CubeTensor<R>; 2],
    (key_tile, products): (usize, MmaInputs),
) -> Result<()> {
    let ([query, key, value], width) = call.staged(inputs, &[output], least_width(call))?;
    // SAFETY: the caller's contract; the cube has 4 planes of 32 units, `width` spans at least
    // one `cp.async` copy, and every index the kernel forms is bounded by the tensors' shapes
    // and the plan's table.
    unsafe {
        dilated_flash_forward_mma::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32),
            width,
            attention_inputs([query, key, value], padding, call.scale),
            call.row_plan(),
            output.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            f32::NEG_INFINITY,
            MmaBlueprint::of(call, key_tile, 1, products),
            call.dtype.into(),
        )
    };
    Ok(())
}

/// Launches the register-resident `dQ` (key tiles of `tiles[0]`) and `dK`/`dV` (query tiles of
/// `tiles[1]`) kernels into `grads`.
///
/// # Safety
/// As [`launch_forward`].
///
/// # Errors
/// As [`launch_forward`].
pub(crate) unsafe fn launch_backward<R: CubeRuntime>(
    call: &Call<R>,
    inputs: [CubeTensor<R>; 4],
    padding: CubeTensor<R>,
    [lse, delta]: [&CubeTensor<R>; 2],
    grads: [&CubeTensor<R>; 3],
    ([key_tile, query_tile], products): ([usize; 2], MmaInputs),
) -> Result<()> {
    let ([query, key, value, grad_output], width) =
        call.staged(inputs, &grads, least_width(call))?;
    let [grad_query, grad_key, grad_value] = grads;
    let cube_dim = CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32);
    let shared = SHARED_MEMORY_BUDGET.min(call.client.properties().hardware.max_shared_memory_size);
    let sub_tiles = key_value_sub_tiles(shared, call.dtype.size(), call.shape.head_dim, query_tile);
    // SAFETY: as in `launch_forward`.
    unsafe {
        dilated_flash_backward_query_mma::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            cube_dim,
            width,
            attention_inputs(
                [query.clone(), key.clone(), value.clone()],
                padding.clone(),
                call.scale,
            ),
            backward_rows(grad_output.clone(), [lse, delta]),
            call.row_plan(),
            grad_query.clone().into_tensor_arg(),
            MmaBlueprint::of(call, key_tile, 1, products),
            call.dtype.into(),
        );
        dilated_flash_backward_key_value_mma::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            cube_dim,
            width,
            attention_inputs([query, key, value], padding, call.scale),
            backward_rows(grad_output, [lse, delta]),
            call.row_plan(),
            grad_key.clone().into_tensor_arg(),
            grad_value.clone().into_tensor_arg(),
            MmaBlueprint::of(call, query_tile, sub_tiles, products),
            call.dtype.into(),
        );
    }
    Ok(())
}

/// Values per load the register-resident launches need: `cp.async` copies 4, 8 or 16 bytes, so
/// two values at least for halves.
fn least_width<R: CubeRuntime>(call: &Call<R>) -> usize {
    if call.dtype.size() == 4 { 1 } else { 2 }
}

/// Query tiles per shared-memory stage of the `dK`/`dV` kernel within `shared` bytes, for
/// elements of `element_size` bytes: 2 where two stages of twice `query_tile` rows (queries and
/// output gradients in the inputs' dtype, and each query's `-LSE` and delta in `f32`) fit, else
/// one. A stage's tiles are computed one after the other with the registers of one, so the
/// second halves the barriers, copies and walk steps per query without adding registers.
fn key_value_sub_tiles(
    shared: usize,
    element_size: usize,
    head_dim: usize,
    query_tile: usize,
) -> usize {
    if two_stages_bytes(2 * query_tile, head_dim, element_size, 2) <= shared {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_stages_hold_two_query_tiles_where_they_fit() {
        // bf16 at head dim 64: two stages of 64 queries and output gradients, 37.9 KB.
        assert_eq!(key_value_sub_tiles(SHARED_MEMORY_BUDGET, 2, 64, 32), 2);
        assert_eq!(key_value_sub_tiles(SHARED_MEMORY_BUDGET, 2, 80, 32), 2);
        // bf16 at 96 and 128 (54 KB, 70.7 KB) and f32 at 64 (74.8 KB) keep one tile a stage.
        assert_eq!(key_value_sub_tiles(SHARED_MEMORY_BUDGET, 2, 96, 32), 1);
        assert_eq!(key_value_sub_tiles(SHARED_MEMORY_BUDGET, 2, 128, 32), 1);
        assert_eq!(key_value_sub_tiles(SHARED_MEMORY_BUDGET, 4, 64, 32), 1);
        assert_eq!(key_value_sub_tiles(SHARED_MEMORY_BUDGET, 4, 16, 32), 2);
        // A device with less shared memory than the budget.
        assert_eq!(key_value_sub_tiles(32 * 1024, 2, 64, 32), 1);
    }
}
