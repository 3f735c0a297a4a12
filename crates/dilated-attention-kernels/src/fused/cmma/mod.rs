//! The `cmma` family: the walk of the portable kernels with `Q K^T` and `P V` on tensor cores
//! through CubeCL's `cmma` 16x16x16 fragments (`f16`/`bf16` in, `f32` accumulation) and row
//! statistics in plane shuffles. A cube is 4 planes of 32 units over 64 query (or key) rows.
//! Needs `f16`/`bf16`, a head dimension that is a multiple of 16 up to 128, 32-unit planes with
//! plane operations and `cmma` for the dtype (CUDA on Volta and later); where the `mma` family
//! can run too, it is the faster one.
//!
//! - [`forward`]: the forward, with conditional rescaling of the opaque accumulators;
//! - [`backward_query`], [`backward_key_value`]: `dQ` and `dK`/`dV`;
//! - [`fragments`]: the fragment building blocks the three share.

mod backward_key_value;
mod backward_query;
pub(crate) mod forward;
mod fragments;

use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::tensor::CubeTensor;
use dilated_attention_core::Result;

use self::backward_key_value::dilated_flash_backward_key_value_tensor_core;
use self::backward_query::dilated_flash_backward_query_tensor_core;
use self::forward::dilated_flash_forward_tensor_core;
use super::call::Call;
use super::kernel_args::{attention_inputs, backward_rows};
use super::tensor_core::TENSOR_CORE_PLANES;

/// The comptime settings of a `cmma` kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CmmaBlueprint {
    /// Rows per walked tile: keys (forward, `dQ`) or queries (`dK`/`dV`).
    pub tile: usize,
    /// Values per row, a multiple of 16.
    pub head_dim: usize,
    /// Keys after the query are hidden.
    pub causal: bool,
    /// The call has a key padding mask.
    pub has_padding: bool,
    /// Rows are read and written through the call's sequence order.
    pub ordered: bool,
}

impl CmmaBlueprint {
    fn of<R: CubeRuntime>(call: &Call<R>, tile: usize) -> Self {
        Self {
            tile,
            head_dim: call.shape.head_dim,
            causal: call.causal,
            has_padding: call.has_padding,
            ordered: call.ordered(),
        }
    }
}

/// Launches the `cmma` forward (walked key tiles of `key_tile`) into `output` and `lse`.
///
/// # Safety
/// The device has what the family needs (checked by the strategy's `cmma` probe).
///
/// # Errors
/// As [`Call::staged`] (never for one value a load).
pub(crate) unsafe fn launch_forward<R: CubeRuntime>(
    call: &Call<R>,
    inputs: [CubeTensor<R>; 3],
    padding: CubeTensor<R>,
    [output, lse]: [&CubeTensor<R>; 2],
    key_tile: usize,
) -> Result<()> {
    let ([query, key, value], width) = call.staged(inputs, &[output], 1)?;
    // SAFETY: the caller's contract; the cube has 4 planes of 32 units and every index the
    // kernel forms is bounded by the tensors' shapes and the plan's table.
    unsafe {
        dilated_flash_forward_tensor_core::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32),
            width,
            attention_inputs([query, key, value], padding, call.scale),
            call.row_plan(),
            output.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            f32::NEG_INFINITY,
            CmmaBlueprint::of(call, key_tile),
            call.dtype.into(),
        )
    };
    Ok(())
}

/// Launches the `cmma` `dQ` (key tiles of `tiles[0]`) and `dK`/`dV` (query tiles of `tiles[1]`)
/// kernels into `grads`.
///
/// # Safety
/// As [`launch_forward`].
pub(crate) unsafe fn launch_backward<R: CubeRuntime>(
    call: &Call<R>,
    inputs: [CubeTensor<R>; 4],
    padding: CubeTensor<R>,
    [lse, delta]: [&CubeTensor<R>; 2],
    [grad_query, grad_key, grad_value]: [&CubeTensor<R>; 3],
    [key_tile, query_tile]: [usize; 2],
) -> Result<()> {
    let ([query, key, value, grad_output], width) =
        call.staged(inputs, &[grad_query, grad_key, grad_value], 1)?;
    let cube_dim = CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32);
    // SAFETY: as in `launch_forward`.
    unsafe {
        dilated_flash_backward_query_tensor_core::launch_unchecked::<R>(
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
            CmmaBlueprint::of(call, key_tile),
            call.dtype.into(),
        );
        dilated_flash_backward_key_value_tensor_core::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            cube_dim,
            width,
            attention_inputs([query, key, value], padding, call.scale),
            backward_rows(grad_output, [lse, delta]),
            call.row_plan(),
            grad_key.clone().into_tensor_arg(),
            grad_value.clone().into_tensor_arg(),
            CmmaBlueprint::of(call, query_tile),
            call.dtype.into(),
        );
    }
    Ok(())
}
