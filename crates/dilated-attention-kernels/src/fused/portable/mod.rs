//! The portable family: one unit per query row, scalar FMAs in `f32` on shared-memory tiles of
//! keys and values. Runs on every CubeCL runtime (CUDA, WGPU including lavapipe, ...), every
//! float dtype, head dimensions up to 256.
//!
//! - [`forward`]: the flash-attention forward over the dilated rows, every pair in one launch;
//! - [`backward`]: `dQ` (cubes over query rows) and `dK`/`dV` (cubes over key rows).

mod backward;
mod forward;

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;

use self::backward::{dilated_flash_backward_key_value, dilated_flash_backward_query};
use self::forward::dilated_flash_forward;
use super::call::Call;
use super::kernel_args::{attention_inputs, backward_rows};

/// The comptime settings of a portable kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PortableBlueprint {
    /// Query (or key) rows per cube, one unit each.
    pub block_rows: usize,
    /// Rows per shared-memory tile of the walked side.
    pub tile: usize,
    /// Values per row.
    pub head_dim: usize,
    /// Keys after the query are hidden.
    pub causal: bool,
    /// The call has a key padding mask.
    pub has_padding: bool,
    /// Rows are read and written through the call's sequence order.
    pub ordered: bool,
}

impl PortableBlueprint {
    fn of<R: CubeRuntime>(call: &Call<R>) -> Self {
        Self {
            block_rows: call.plan.block_rows,
            tile: call.tile,
            head_dim: call.shape.head_dim,
            causal: call.causal,
            has_padding: call.has_padding,
            ordered: call.ordered(),
        }
    }
}

/// Launches the portable forward into `output` and `lse`.
pub(crate) fn launch_forward<R: CubeRuntime>(
    call: &Call<R>,
    [query, key, value]: [CubeTensor<R>; 3],
    padding: CubeTensor<R>,
    [output, lse]: [&CubeTensor<R>; 2],
) {
    // SAFETY: every index the kernel forms is bounded by the tensors' shapes (rows < seq_len,
    // columns < head_dim, table entries written by `LaunchPlan`).
    unsafe {
        dilated_flash_forward::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            call.cube_dim(),
            attention_inputs([query, key, value], padding, call.scale),
            call.row_plan(),
            output.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            f32::NEG_INFINITY,
            PortableBlueprint::of(call),
            call.dtype.into(),
        )
    };
}

/// Launches the portable `dQ` and `dK`/`dV` kernels into `grads`.
pub(crate) fn launch_backward<R: CubeRuntime>(
    call: &Call<R>,
    [query, key, value, grad_output]: [CubeTensor<R>; 4],
    padding: CubeTensor<R>,
    [lse, delta]: [&CubeTensor<R>; 2],
    [grad_query, grad_key, grad_value]: [&CubeTensor<R>; 3],
) {
    let blueprint = PortableBlueprint::of(call);
    // SAFETY: as in `launch_forward`.
    unsafe {
        dilated_flash_backward_query::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            call.cube_dim(),
            attention_inputs(
                [query.clone(), key.clone(), value.clone()],
                padding.clone(),
                call.scale,
            ),
            backward_rows(grad_output.clone(), [lse, delta]),
            call.row_plan(),
            grad_query.clone().into_tensor_arg(),
            blueprint,
            call.dtype.into(),
        );
        dilated_flash_backward_key_value::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            call.cube_dim(),
            attention_inputs([query, key, value], padding, call.scale),
            backward_rows(grad_output, [lse, delta]),
            call.row_plan(),
            grad_key.clone().into_tensor_arg(),
            grad_value.clone().into_tensor_arg(),
            blueprint,
            call.dtype.into(),
        );
    }
}
