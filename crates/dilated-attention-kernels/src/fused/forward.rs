//! The fused forward: checks the call, allocates the output and the LSE, and launches the
//! family [`select`] picks.

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, Result, SequenceOrder,
};

use super::call::Call;
use super::strategy::{Family, select};
use super::{cmma, mma, portable};

/// The fused forward: returns the output `[b, n, h, d]` in the inputs' dtype and the LSE
/// `[b, n, h]` in `f32`.
///
/// `padding` is the key padding mask as floats of the inputs' dtype (1 = padded), `[b, n]`.
/// With `order`, the call attends along it ([`SequenceOrder`]): every row is read and written
/// at its token's place, so the tensors keep their layout.
///
/// # Errors
/// Shape and config errors of the reference path; the strategy's errors ([`select`]);
/// [`DilatedAttentionError::Unsupported`] when the strategy resolves to the reference path
/// (callers ask first).
pub(crate) fn forward<R: CubeRuntime>(
    query: CubeTensor<R>,
    key: CubeTensor<R>,
    value: CubeTensor<R>,
    padding: Option<CubeTensor<R>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    #[cfg(feature = "nvrtc-options")]
    mma::compile_options::install()?;
    let call = Call::new(&query, &key, &value, padding.as_ref(), config, order)?;
    let family = select(&call.client, call.shape.dims(), call.dtype, config)?;
    let output = call.empty_like_input();
    let lse = call.empty_rows_f32();
    let padding = padding.unwrap_or_else(|| query.clone());
    let inputs = [query, key, value];
    let outputs = [&output, &lse];
    match family {
        Family::Reference => return Err(reference_call()),
        Family::Portable => portable::launch_forward(&call, inputs, padding, outputs),
        // SAFETY: `select` checked the device's plane size and operations and `cmma`.
        Family::Cmma { key_tile, .. } => unsafe {
            cmma::launch_forward(&call, inputs, padding, outputs, key_tile)?
        },
        // SAFETY: `select` checked the device's plane size and operations, the manual MMA for
        // the dtype, `ldmatrix` and `cp.async`.
        Family::Mma {
            key_tile,
            inputs: products,
            ..
        } => unsafe { mma::launch_forward(&call, inputs, padding, outputs, (key_tile, products))? },
    }
    Ok((output, lse))
}

/// The error of a fused launch asked for a call the strategy gives to the reference path.
pub(crate) fn reference_call() -> DilatedAttentionError {
    DilatedAttentionError::Unsupported {
        kind: "fused dilated attention".into(),
        reason: "the kernel strategy gives this call to the reference path".into(),
    }
}
