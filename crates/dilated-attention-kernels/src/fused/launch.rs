//! Launching the fused kernels on `CubeTensor`s: shape checks, tile sizes, the launch table,
//! output allocation.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use dilated_attention_core::{
    AttentionImplementation, AttentionShape, DilatedAttentionConfig, Result,
};

use super::forward::dilated_flash_forward;
use super::launch_plan::LaunchPlan;

/// Units (query rows) per cube of the portable kernels.
const BLOCK_ROWS: usize = 64;
/// Largest head dimension the fused kernels take (registers per unit grow with it).
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Largest grid extent along y (heads) and z (batch) that every runtime accepts.
const MAX_GRID_YZ: usize = 65_535;

/// Shared memory the portable kernels allow themselves per cube (CUDA's static limit; lavapipe
/// and many Vulkan drivers allow 32 KiB, which the device's own limit caps this to).
const SHARED_MEMORY_BUDGET: usize = 48 * 1024;

/// Key rows per shared-memory tile: the largest power of two up to 64 whose key and value
/// tiles (`f32`) and visibility flags fit the device's shared memory.
pub(crate) fn key_tile(head_dim: usize, device_shared_memory: usize) -> usize {
    let budget = SHARED_MEMORY_BUDGET.min(device_shared_memory);
    let bytes_per_key = (2 * head_dim + 1) * size_of::<f32>();
    let mut tile = 64;
    while tile > 1 && tile * bytes_per_key > budget {
        tile /= 2;
    }
    tile
}

/// Whether the fused kernels take this call; otherwise the reference path runs it.
///
/// They take everything except: the reference path forced by the config, dropout while
/// training, a head dimension above [`MAX_HEAD_DIM`], more than 65,535 heads or batches, and
/// tensors beyond 32-bit element addressing.
pub(crate) fn fused_supported(
    shape: &AttentionShape,
    config: &DilatedAttentionConfig,
    training: bool,
) -> bool {
    let elements = shape.batch * shape.seq_len * shape.num_heads * shape.head_dim;
    config.implementation == AttentionImplementation::Auto
        && !(training && config.dropout > 0.0)
        && shape.head_dim <= MAX_HEAD_DIM
        && shape.num_heads <= MAX_GRID_YZ
        && shape.batch <= MAX_GRID_YZ
        && u32::try_from(elements).is_ok()
}

/// Uploads the launch table.
fn table_arg<R: CubeRuntime>(client: &ComputeClient<R>, table: &[u32]) -> ArrayArg<R> {
    let handle = client.create_from_slice(u32::as_bytes(table));
    // SAFETY: the handle holds exactly `table.len()` u32 values.
    unsafe { ArrayArg::from_raw_parts(handle, table.len()) }
}

/// The fused forward: returns the output `[b, n, h, d]` in the inputs' dtype and the LSE
/// `[b, n, h]` in `f32`.
///
/// `padding` is the key padding mask as floats of the inputs' dtype (1 = padded), `[b, n]`.
///
/// # Errors
/// Shape and config errors of the reference path.
pub(crate) fn forward<R: CubeRuntime>(
    query: CubeTensor<R>,
    key: CubeTensor<R>,
    value: CubeTensor<R>,
    padding: Option<CubeTensor<R>>,
    config: &DilatedAttentionConfig,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    let shape = AttentionShape::check_inputs(
        &query.meta.shape().as_slice(),
        &key.meta.shape().as_slice(),
        &value.meta.shape().as_slice(),
        padding.as_ref().map(|mask| {
            [
                mask.meta.shape().as_slice()[0],
                mask.meta.shape().as_slice()[1],
            ]
        }),
    )?;
    let plan = LaunchPlan::new(config, shape.seq_len, shape.num_heads, BLOCK_ROWS)?;
    let scale = config
        .scale
        .unwrap_or_else(|| 1.0 / (shape.head_dim as f64).sqrt()) as f32;
    let client = query.client.clone();
    let device = query.device.clone();
    let dtype = query.dtype;
    let output = empty_device_dtype(
        client.clone(),
        device.clone(),
        Shape::from(shape.dims().to_vec()),
        dtype,
    );
    let lse = empty_device_dtype(
        client.clone(),
        device,
        Shape::from(vec![shape.batch, shape.seq_len, shape.num_heads]),
        DType::F32,
    );
    let has_padding = padding.is_some();
    let padding = padding.unwrap_or_else(|| query.clone());
    let cube_count = CubeCount::Static(plan.blocks_x, shape.num_heads as u32, shape.batch as u32);
    let cube_dim = CubeDim::new_1d(plan.block_rows as u32);
    // SAFETY: every index the kernel forms is bounded by the tensors' shapes (rows < seq_len,
    // columns < head_dim, table entries written by `LaunchPlan`).
    unsafe {
        dilated_flash_forward::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            query.into_tensor_arg(),
            key.into_tensor_arg(),
            value.into_tensor_arg(),
            padding.into_tensor_arg(),
            table_arg(&client, &plan.table),
            output.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            scale,
            f32::NEG_INFINITY,
            plan.block_rows,
            key_tile(
                shape.head_dim,
                client.properties().hardware.max_shared_memory_size,
            ),
            shape.head_dim,
            config.causal,
            has_padding,
            dtype.into(),
        )
    };
    Ok((output, lse))
}
