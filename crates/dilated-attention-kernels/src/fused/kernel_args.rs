//! The kernels' runtime arguments, grouped by what they are rather than passed one by one.
//!
//! CubeCL flattens each struct into the same bindings and scalars the fields would be, so a
//! kernel's generated code does not change; the launchers build them with the `...Launch`
//! types the derive makes ([`AttentionInputsLaunch`], [`RowPlanLaunch`],
//! [`BackwardRowsLaunch`]).

use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::tensor::CubeTensor;

/// The attention's inputs: `query`, `key`, `value` `[b, n, h, d]` read as `E` (the dtype, or
/// vectors of it), the key padding mask `padding` `[b, n]` (1 = padded; any tensor when the
/// blueprint says the call has none) and the softmax scale.
#[derive(CubeLaunch, CubeType)]
pub(crate) struct AttentionInputs<F: Float, E: CubePrimitive> {
    pub query: Tensor<E>,
    pub key: Tensor<E>,
    pub value: Tensor<E>,
    pub padding: Tensor<F>,
    pub scale: f32,
}

/// Where each cube's rows are: the launch table of pairs and head offsets
/// ([`crate::fused::launch_plan`]) and the sequence order (memory row of each position; one
/// unused entry when the call has none).
#[derive(CubeLaunch, CubeType)]
pub(crate) struct RowPlan {
    pub table: Array<u32>,
    pub order: Array<u32>,
}

/// What the backward reads besides the inputs: the output's gradient `[b, n, h, d]`, the
/// forward's LSE and the rows' `delta = rowsum(dO * O)` `[b, n, h]` in `f32`.
#[derive(CubeLaunch, CubeType)]
pub(crate) struct BackwardRows<E: CubePrimitive> {
    pub grad_output: Tensor<E>,
    pub lse: Tensor<f32>,
    pub delta: Tensor<f32>,
}

/// The launch argument of [`AttentionInputs`]: `query`, `key`, `value` and `padding` (the
/// query stands in for a call without a mask: the kernels never read it) with `scale`.
pub(crate) fn attention_inputs<F: Float, E: CubePrimitive, R: CubeRuntime>(
    [query, key, value]: [CubeTensor<R>; 3],
    padding: CubeTensor<R>,
    scale: f32,
) -> AttentionInputsLaunch<F, E, R> {
    AttentionInputsLaunch::new(
        query.into_tensor_arg(),
        key.into_tensor_arg(),
        value.into_tensor_arg(),
        padding.into_tensor_arg(),
        scale,
    )
}

/// The launch argument of [`BackwardRows`].
pub(crate) fn backward_rows<E: CubePrimitive, R: CubeRuntime>(
    grad_output: CubeTensor<R>,
    [lse, delta]: [&CubeTensor<R>; 2],
) -> BackwardRowsLaunch<E, R> {
    BackwardRowsLaunch::new(
        grad_output.into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
    )
}
