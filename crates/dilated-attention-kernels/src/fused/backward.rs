//! The fused backward: the delta pass every family shares, then the family's `dQ` and `dK`/`dV`
//! kernels.

use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::tensor::CubeTensor;
use dilated_attention_core::{DilatedAttentionConfig, Result, SequenceOrder};

use super::call::Call;
use super::delta::{DELTA_PARTS, attention_delta};
use super::forward::reference_call;
use super::strategy::{Family, select};
use super::{cmma, mma, portable};

/// The inputs of the fused backward besides the forward's.
pub(crate) struct BackwardInputs<R: CubeRuntime> {
    /// The forward's output.
    pub output: CubeTensor<R>,
    /// The forward's LSE, `f32`.
    pub lse: CubeTensor<R>,
    /// Gradient of the output (inputs' dtype).
    pub grad_output: CubeTensor<R>,
    /// Gradient of the LSE, `f32`, when the LSE was used.
    pub grad_lse: Option<CubeTensor<R>>,
}

/// The fused backward: `[dQ, dK, dV]` in the inputs' dtype, along `order` when given (as in
/// [`super::forward::forward`]). The delta kernel runs on the tensors' own layout, which every
/// other kernel reads through the order like the rest.
///
/// # Errors
/// As [`super::forward::forward`].
pub(crate) fn backward<R: CubeRuntime>(
    query: CubeTensor<R>,
    key: CubeTensor<R>,
    value: CubeTensor<R>,
    padding: Option<CubeTensor<R>>,
    inputs: BackwardInputs<R>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<[CubeTensor<R>; 3]> {
    #[cfg(feature = "nvrtc-options")]
    mma::compile_options::install()?;
    let call = Call::new(&query, &key, &value, padding.as_ref(), config, order)?;
    let family = select(&call.client, call.shape.dims(), call.dtype, config)?;
    if family == Family::Reference {
        return Err(reference_call());
    }
    let BackwardInputs {
        output,
        lse,
        grad_output,
        grad_lse,
    } = inputs;
    let delta = call.empty_rows_f32();
    launch_delta(&call, [&output, &grad_output], grad_lse, &lse, &delta);
    let grads = [(); 3].map(|()| call.empty_like_input());
    let padding = padding.unwrap_or_else(|| query.clone());
    let inputs = [query, key, value, grad_output];
    let rows = [&lse, &delta];
    let [grad_query, grad_key, grad_value] = &grads;
    let outputs = [grad_query, grad_key, grad_value];
    match family {
        Family::Reference => return Err(reference_call()),
        Family::Portable => portable::launch_backward(&call, inputs, padding, rows, outputs),
        // SAFETY: as in the forward.
        Family::Cmma {
            key_tile,
            query_tile,
        } => unsafe {
            cmma::launch_backward(
                &call,
                inputs,
                padding,
                rows,
                outputs,
                [key_tile, query_tile],
            )?
        },
        // SAFETY: as in the forward.
        Family::Mma {
            key_tile,
            query_tile,
            inputs: products,
        } => unsafe {
            mma::launch_backward(
                &call,
                inputs,
                padding,
                rows,
                outputs,
                ([key_tile, query_tile], products),
            )?
        },
    }
    Ok(grads)
}

/// Launches the delta pass into `delta`: `delta_i = sum_d dO_i * O_i - dLSE_i`, with
/// `DELTA_PARTS` units per (batch, row, head) and 32 rows per cube.
fn launch_delta<R: CubeRuntime>(
    call: &Call<R>,
    [output, grad_output]: [&CubeTensor<R>; 2],
    grad_lse: Option<CubeTensor<R>>,
    lse: &CubeTensor<R>,
    delta: &CubeTensor<R>,
) {
    let rows = call.shape.batch * call.shape.seq_len * call.shape.num_heads;
    let rows_per_cube = 32;
    let has_grad_lse = grad_lse.is_some();
    // The LSE stands in (never read) for an unused LSE gradient.
    let grad_lse = grad_lse.unwrap_or_else(|| lse.clone());
    // SAFETY: `DELTA_PARTS` units per (batch, row, head); rows past `delta.len()` write nothing.
    unsafe {
        attention_delta::launch_unchecked::<R>(
            &call.client,
            CubeCount::Static(rows.div_ceil(rows_per_cube) as u32, 1, 1),
            CubeDim::new_1d((rows_per_cube * DELTA_PARTS) as u32),
            output.clone().into_tensor_arg(),
            grad_output.clone().into_tensor_arg(),
            grad_lse.into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            call.shape.head_dim,
            rows_per_cube,
            has_grad_lse,
            call.dtype.into(),
        )
    };
}
