//! Launching the fused kernels on `CubeTensor`s: shape checks, tile sizes, the launch table,
//! output allocation.

use std::sync::{Mutex, Weak};

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::features::{MmaConfig, Plane};
use burn_cubecl::cubecl::ir::{ElemType, FloatKind};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use dilated_attention_core::{
    AttentionImplementation, AttentionShape, DilatedAttentionConfig, Result, SequenceOrder,
};

use super::backward::{
    DELTA_PARTS, attention_delta, dilated_flash_backward_key_value, dilated_flash_backward_query,
};
use super::backward_key_value_mma::dilated_flash_backward_key_value_mma;
use super::backward_key_value_tensor_core::dilated_flash_backward_key_value_tensor_core;
use super::backward_query_mma::dilated_flash_backward_query_mma;
use super::backward_query_tensor_core::dilated_flash_backward_query_tensor_core;
use super::forward::dilated_flash_forward;
use super::forward_mma::dilated_flash_forward_mma;
use super::forward_tensor_core::{
    KEY_PAD, PROBABILITY_PAD, SCRATCH_PAD, dilated_flash_forward_tensor_core,
};
use super::fragments::{TENSOR_CORE_BLOCK_ROWS, TENSOR_CORE_PLANES};
use super::launch_plan::LaunchPlan;
use crate::backend::check_fused_call;

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
/// tiles (`f32`), two per-row values (visibility; LSE and delta in the backward) and a column
/// of per-unit scores fit the device's shared memory.
pub(crate) fn key_tile(head_dim: usize, device_shared_memory: usize) -> usize {
    let budget = SHARED_MEMORY_BUDGET.min(device_shared_memory);
    let bytes_per_key = (2 * head_dim + 2 + BLOCK_ROWS) * size_of::<f32>();
    let mut tile = 64;
    while tile > 1 && tile * bytes_per_key > budget {
        tile /= 2;
    }
    tile
}

/// Environment variable that picks the kernels (read at every call), for comparisons and for
/// isolating a fault: `portable` forces the portable kernels (forward and backward) even where
/// the tensor-core ones would run; `cmma` keeps the tensor-core kernels but runs the `cmma`
/// ones instead of the register-resident ones (forward and backward).
///
/// ```
/// assert_eq!(dilated_attention_kernels::KERNEL_VARIANT_ENV, "DILATED_ATTENTION_KERNEL");
/// ```
pub const KERNEL_VARIANT_ENV: &str = "DILATED_ATTENTION_KERNEL";

/// The variant of a kernel a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelVariant {
    /// Scalar FMAs on shared-memory tiles, one unit per row: every runtime.
    Portable,
    /// `cmma` fragments and plane shuffles, with this many rows per walked tile.
    TensorCore { tile: usize },
}

/// Shared memory of a tensor-core kernel for walked tiles of `tile` rows: two row tiles (keys
/// and values; queries and output gradients) and the per-plane probabilities in the inputs'
/// dtype (2 bytes), the per-plane `f32` scratch and `row_values` `f32` columns (the key bias;
/// the queries' LSE and delta).
fn tensor_core_shared_bytes(tile: usize, head_dim: usize, row_values: usize) -> usize {
    2 * tile * (head_dim + KEY_PAD) * 2
        + TENSOR_CORE_PLANES * 16 * (tile + PROBABILITY_PAD) * 2
        + TENSOR_CORE_PLANES * 16 * (tile + SCRATCH_PAD) * 4
        + row_values * tile * 4
}

/// Picks a kernel's variant from the device's features: the tensor-core variant for
/// `f16`/`bf16` inputs with a head dimension that is a multiple of 16 up to 128, on a device whose
/// planes have 32 units, with plane operations and `cmma` 16x16x16 for the dtype into `f32` (CUDA
/// on Volta and later; not lavapipe), with the largest tile of 64, 32 or 16 rows up to
/// `largest_tile` whose shared memory (with `row_values` per-row columns) fits; the portable
/// variant otherwise, or when [`KERNEL_VARIANT_ENV`] is `portable`.
///
/// Not on the WGPU runtime: WGSL has no `cmma`, and the `cmma` kernels compiled to SPIR-V
/// (burn's `vulkan` feature) crashed the process in NVIDIA's Vulkan driver on an H100 (segfault,
/// driver 580.159.04, f16; the portable kernels pass the oracle suite there), so WGPU runs the
/// portable kernels until that is resolved.
pub(crate) fn kernel_variant<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    row_values: usize,
    largest_tile: usize,
) -> KernelVariant {
    let kind = match dtype {
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return KernelVariant::Portable,
    };
    if std::env::var(KERNEL_VARIANT_ENV).is_ok_and(|v| v == "portable")
        || R::name(client).starts_with("wgpu")
        || !head_dim.is_multiple_of(16)
        || head_dim > 128
    {
        return KernelVariant::Portable;
    }
    let properties = client.properties();
    let hardware = &properties.hardware;
    let features = client.features();
    let wanted = MmaConfig {
        a_type: ElemType::Float(kind).into(),
        b_type: ElemType::Float(kind).into(),
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: 16,
        k: 16,
        n: 16,
    };
    if hardware.plane_size_min != 32
        || hardware.plane_size_max != 32
        || !features.plane.contains(Plane::Ops)
        || !features.matmul.cmma.contains(&wanted)
    {
        return KernelVariant::Portable;
    }
    let shared = SHARED_MEMORY_BUDGET.min(hardware.max_shared_memory_size);
    [64, 32, 16]
        .into_iter()
        .find(|&tile| {
            tile <= largest_tile && tensor_core_shared_bytes(tile, head_dim, row_values) <= shared
        })
        .map_or(KernelVariant::Portable, |tile| KernelVariant::TensorCore {
            tile,
        })
}

/// Keys per tile of the register-resident kernels ([`super::forward_mma`] and the `dQ` of
/// [`super::backward_query_mma`]; the key/value backward walks query tiles of 32) when they can
/// run: a
/// tensor-core call ([`kernel_variant`]) on a device with manual MMA m16n8k16 and `ldmatrix` for
/// the dtype and `cp.async` (CUDA on Ampere and later), unless [`KERNEL_VARIANT_ENV`] is `cmma`
/// (the `cmma` forward, for comparisons); 64 keys, or 32 where two stages of 64 (each: keys and
/// values, the key bias, and the memory rows a call along an order brings in) do not fit the
/// shared memory.
pub(crate) fn mma_forward_tile<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
) -> Option<usize> {
    if std::env::var(KERNEL_VARIANT_ENV).is_ok_and(|v| v == "cmma")
        || kernel_variant(client, dtype, head_dim, 1, 64) == KernelVariant::Portable
    {
        return None;
    }
    let kind = match dtype {
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return None,
    };
    let half: StorageType = ElemType::Float(kind).into();
    let wanted = MmaConfig {
        a_type: half,
        b_type: half,
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: 16,
        k: 16,
        n: 8,
    };
    let features = client.features();
    if !features.matmul.mma.contains(&wanted)
        || !features.matmul.ldmatrix.contains(&half)
        || !features.copy_async
    {
        return None;
    }
    let shared = SHARED_MEMORY_BUDGET.min(client.properties().hardware.max_shared_memory_size);
    [64, 32]
        .into_iter()
        .find(|&tile| two_stages_bytes(tile, head_dim, 2, 2) <= shared)
}

/// Shared memory of a register-resident kernel's two stages of `rows` rows: two row tiles
/// (`head_dim + KEY_PAD` values of `element_size` bytes a row) and `f32_per_row` `f32` values
/// per row (the key bias, or the queries' `-LSE` and delta, and the memory rows of a call along
/// an order).
fn two_stages_bytes(
    rows: usize,
    head_dim: usize,
    element_size: usize,
    f32_per_row: usize,
) -> usize {
    2 * (2 * rows * (head_dim + KEY_PAD) * element_size + f32_per_row * rows * size_of::<f32>())
}

/// Query tiles per shared-memory stage of the register-resident `dK`/`dV` kernel: 2 where two
/// stages of twice `query_tile` rows (queries and output gradients in the inputs' dtype, and each
/// query's `-LSE` and delta in `f32`) fit the shared memory, else 1. A stage's tiles are computed
/// one after the other with the registers of one, so the second halves the barriers, copies and
/// walk steps per query without adding registers.
pub(crate) fn key_value_sub_tiles<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    query_tile: usize,
) -> usize {
    let shared = SHARED_MEMORY_BUDGET.min(client.properties().hardware.max_shared_memory_size);
    sub_tiles_within(shared, dtype.size(), head_dim, query_tile)
}

/// [`key_value_sub_tiles`] for `shared` bytes and elements of `element_size` bytes.
fn sub_tiles_within(
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

/// Rows per walked tile of a register-resident kernel on TF32 ([`super::tf32_tiles`]) when it
/// can run: `f32` inputs (one TF32 product with [`DilatedAttentionConfig::allow_tf32`], else
/// three for about `f32` accuracy), a head dimension that is a multiple of 16 up
/// to 128, not on WGPU nor with [`KERNEL_VARIANT_ENV`] `portable` or `cmma`, on a device with
/// 32-unit planes, plane operations, manual MMA m16n8k8 TF32 into `f32` and `cp.async` (CUDA on
/// Ampere and later); the largest of 64, 32, 16 rows up to `largest_tile` whose two stages (two
/// row tiles in `f32` and three `f32` values per row: the key bias or the queries' `-LSE` and
/// delta, and the memory rows a call along an order brings in) fit the shared memory.
pub(crate) fn tf32_tile<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    largest_tile: usize,
) -> Option<usize> {
    if dtype != DType::F32
        || std::env::var(KERNEL_VARIANT_ENV).is_ok_and(|v| v == "portable" || v == "cmma")
        || R::name(client).starts_with("wgpu")
        || !head_dim.is_multiple_of(16)
        || head_dim > 128
    {
        return None;
    }
    let properties = client.properties();
    let hardware = &properties.hardware;
    let features = client.features();
    let tf32: StorageType = ElemType::Float(FloatKind::TF32).into();
    let wanted = MmaConfig {
        a_type: tf32,
        b_type: tf32,
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: 16,
        k: 8,
        n: 8,
    };
    if hardware.plane_size_min != 32
        || hardware.plane_size_max != 32
        || !features.plane.contains(Plane::Ops)
        || !features.matmul.mma.contains(&wanted)
        || !features.copy_async
    {
        return None;
    }
    let shared = SHARED_MEMORY_BUDGET.min(hardware.max_shared_memory_size);
    [64, 32, 16]
        .into_iter()
        .find(|&tile| tile <= largest_tile && two_stages_bytes(tile, head_dim, 4, 3) <= shared)
}

/// Values per global load of the tensor-core kernel (values of `elem_size` bytes, the dtype's):
/// the widest of 8, 4, 2 that the device's loads take, that spans at most 16 bytes (a
/// `cp.async`), that divides the head dimension and every stride but the contiguous last one,
/// and that the buffers' offsets are aligned to; 1 otherwise.
fn load_width<R: CubeRuntime>(
    client: &ComputeClient<R>,
    tensors: &[&CubeTensor<R>],
    head_dim: usize,
    elem_size: usize,
) -> usize {
    let widest = client
        .io_optimized_vector_sizes(elem_size)
        .next()
        .unwrap_or(1);
    [8, 4, 2]
        .into_iter()
        .find(|&width| {
            width <= widest
                && width * elem_size <= 16
                && head_dim.is_multiple_of(width)
                && tensors.iter().all(|tensor| {
                    let strides = tensor.meta.strides();
                    strides[3] == 1
                        && strides[..3].iter().all(|s| s.is_multiple_of(width))
                        && tensor
                            .handle
                            .offset_start
                            .is_none_or(|offset| offset.is_multiple_of((elem_size * width) as u64))
                })
        })
        .unwrap_or(1)
}

/// `tensor` with a contiguous last dimension, which the tensor-core kernels' row loads assume
/// (copied only when it has another layout).
fn unit_last_stride<R: CubeRuntime>(tensor: CubeTensor<R>) -> CubeTensor<R> {
    if tensor.meta.strides()[3] == 1 {
        tensor
    } else {
        into_contiguous(tensor)
    }
}

/// Device copies of the sequence orders calls attend along: a module that attends along the same
/// order at every call (Hilbert attention's cached orders) uploads it once per device instead of
/// once per call. An entry holds a weak reference to the order's buffer (which also keeps that
/// address from being reused while the entry exists) and is dropped once the order is gone.
struct OrderCacheEntry {
    tokens: Weak<[u32]>,
    device: String,
    handle: Handle,
}

static ORDER_CACHE: Mutex<Vec<OrderCacheEntry>> = Mutex::new(Vec::new());

/// The device copy of `order` for `client`'s device (`R`, `device`), uploaded on first use.
fn device_order<R: CubeRuntime>(
    client: &ComputeClient<R>,
    device: &R::Device,
    order: &SequenceOrder,
) -> Handle {
    let tokens = order.shared_tokens();
    let device = format!("{}/{device:?}", std::any::type_name::<R>());
    let mut cache = ORDER_CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache.retain(|entry| entry.tokens.strong_count() > 0);
    if let Some(entry) = cache
        .iter()
        .find(|entry| entry.device == device && Weak::ptr_eq(&entry.tokens, &tokens))
    {
        return entry.handle.clone();
    }
    let handle = client.create_from_slice(u32::as_bytes(order.tokens()));
    cache.push(OrderCacheEntry {
        tokens,
        device,
        handle: handle.clone(),
    });
    handle
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

/// What every launch of one call shares.
struct Call<R: CubeRuntime> {
    shape: AttentionShape,
    plan: LaunchPlan,
    /// The plan's table, uploaded once per call and shared by its launches.
    table: Handle,
    /// The sequence order the call attends along (`u32` per position; see [`device_order`]).
    order: Option<(Handle, usize)>,
    scale: f32,
    tile: usize,
    client: ComputeClient<R>,
    device: R::Device,
    dtype: DType,
}

impl<R: CubeRuntime> Call<R> {
    fn new(
        query: &CubeTensor<R>,
        key: &CubeTensor<R>,
        value: &CubeTensor<R>,
        padding: Option<&CubeTensor<R>>,
        config: &DilatedAttentionConfig,
        order: Option<&SequenceOrder>,
    ) -> Result<Self> {
        let shape = check_fused_call(
            query.meta.shape().as_slice(),
            key.meta.shape().as_slice(),
            value.meta.shape().as_slice(),
            padding.map(|mask| mask.meta.shape().as_slice()),
            config,
            order,
        )?;
        let plan = LaunchPlan::new(config, shape.seq_len, shape.num_heads, BLOCK_ROWS)?;
        let scale = config
            .scale
            .unwrap_or_else(|| 1.0 / (shape.head_dim as f64).sqrt()) as f32;
        let client = query.client.clone();
        let table = client.create_from_slice(u32::as_bytes(&plan.table));
        let order = order.map(|order| (device_order(&client, &query.device, order), order.len()));
        let tile = key_tile(
            shape.head_dim,
            client.properties().hardware.max_shared_memory_size,
        );
        Ok(Self {
            shape,
            plan,
            table,
            order,
            scale,
            tile,
            client,
            device: query.device.clone(),
            dtype: query.dtype,
        })
    }

    fn empty(&self, dims: Vec<usize>, dtype: DType) -> CubeTensor<R> {
        empty_device_dtype(
            self.client.clone(),
            self.device.clone(),
            Shape::from(dims),
            dtype,
        )
    }

    fn empty_like_input(&self) -> CubeTensor<R> {
        self.empty(self.shape.dims().to_vec(), self.dtype)
    }

    fn empty_rows_f32(&self) -> CubeTensor<R> {
        let AttentionShape {
            batch,
            seq_len,
            num_heads,
            ..
        } = self.shape;
        self.empty(vec![batch, seq_len, num_heads], DType::F32)
    }

    fn table(&self) -> ArrayArg<R> {
        // SAFETY: the handle holds exactly `plan.table.len()` u32 values.
        unsafe { ArrayArg::from_raw_parts(self.table.clone(), self.plan.table.len()) }
    }

    /// The call's sequence order; the table stands in (never read) for a call without one.
    fn order(&self) -> ArrayArg<R> {
        match &self.order {
            // SAFETY: the handle holds exactly `len` u32 values.
            Some((handle, len)) => unsafe { ArrayArg::from_raw_parts(handle.clone(), *len) },
            None => self.table(),
        }
    }

    /// Whether the kernels read rows through [`Self::order`].
    fn ordered(&self) -> bool {
        self.order.is_some()
    }

    fn cube_count(&self) -> CubeCount {
        CubeCount::Static(
            self.plan.blocks_x,
            self.shape.num_heads as u32,
            self.shape.batch as u32,
        )
    }

    fn cube_dim(&self) -> CubeDim {
        CubeDim::new_1d(self.plan.block_rows as u32)
    }
}

/// The products of a register-resident launch: `f16`/`bf16` on m16n8k16, or `f32` on TF32
/// (`split`: three TF32 products each).
#[derive(Debug, Clone, Copy)]
struct MmaInputs {
    tf32: bool,
    split: bool,
}

impl MmaInputs {
    const HALVES: Self = Self {
        tf32: false,
        split: false,
    };

    /// `f32` on TF32, split (about `f32` accuracy) unless the config allows plain TF32.
    fn tf32(config: &DilatedAttentionConfig) -> Self {
        Self {
            tf32: true,
            split: !config.allow_tf32,
        }
    }
}

impl<R: CubeRuntime> Call<R> {
    /// Launches the register-resident forward into `output` and `lse`.
    ///
    /// # Safety
    /// The device has what `inputs` needs (checked by [`mma_forward_tile`] for halves, by
    /// [`tf32_tile`] for TF32) and `width` is a [`load_width`] of the tensors of at least 2
    /// values for halves.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_forward_mma(
        &self,
        [query, key, value]: [CubeTensor<R>; 3],
        padding: CubeTensor<R>,
        [output, lse]: [&CubeTensor<R>; 2],
        width: usize,
        key_tile: usize,
        config: &DilatedAttentionConfig,
        has_padding: bool,
        inputs: MmaInputs,
    ) {
        // SAFETY: the caller's contract; the cube has 4 planes of 32 units and every index the
        // kernel forms is bounded by the tensors' shapes and the plan's table.
        unsafe {
            dilated_flash_forward_mma::launch_unchecked::<R>(
                &self.client,
                self.cube_count(),
                CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32),
                width,
                query.into_tensor_arg(),
                key.into_tensor_arg(),
                value.into_tensor_arg(),
                padding.into_tensor_arg(),
                self.table(),
                self.order(),
                output.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                self.scale,
                f32::NEG_INFINITY,
                key_tile,
                self.shape.head_dim,
                config.causal,
                has_padding,
                self.ordered(),
                inputs.tf32,
                inputs.split,
                self.dtype.into(),
            )
        }
    }

    /// Launches the register-resident `dQ` (key tiles of `tiles[0]`) and `dK`/`dV` (query tiles
    /// of `tiles[1]`) kernels into `grads`.
    ///
    /// # Safety
    /// As [`Self::launch_forward_mma`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_backward_mma(
        &self,
        [query, key, value, grad_output]: [CubeTensor<R>; 4],
        padding: CubeTensor<R>,
        [lse, delta]: [&CubeTensor<R>; 2],
        [grad_query, grad_key, grad_value]: [&CubeTensor<R>; 3],
        width: usize,
        [key_tile, query_tile]: [usize; 2],
        config: &DilatedAttentionConfig,
        has_padding: bool,
        inputs: MmaInputs,
    ) {
        let cube_dim = CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32);
        // SAFETY: as in `launch_forward_mma`.
        unsafe {
            dilated_flash_backward_query_mma::launch_unchecked::<R>(
                &self.client,
                self.cube_count(),
                cube_dim,
                width,
                query.clone().into_tensor_arg(),
                key.clone().into_tensor_arg(),
                value.clone().into_tensor_arg(),
                padding.clone().into_tensor_arg(),
                grad_output.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                delta.clone().into_tensor_arg(),
                self.table(),
                self.order(),
                grad_query.clone().into_tensor_arg(),
                self.scale,
                key_tile,
                self.shape.head_dim,
                config.causal,
                has_padding,
                self.ordered(),
                inputs.tf32,
                inputs.split,
                self.dtype.into(),
            );
            dilated_flash_backward_key_value_mma::launch_unchecked::<R>(
                &self.client,
                self.cube_count(),
                cube_dim,
                width,
                query.into_tensor_arg(),
                key.into_tensor_arg(),
                value.into_tensor_arg(),
                padding.into_tensor_arg(),
                grad_output.into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                delta.clone().into_tensor_arg(),
                self.table(),
                self.order(),
                grad_key.clone().into_tensor_arg(),
                grad_value.clone().into_tensor_arg(),
                self.scale,
                query_tile,
                key_value_sub_tiles(&self.client, self.dtype, self.shape.head_dim, query_tile),
                self.shape.head_dim,
                config.causal,
                has_padding,
                self.ordered(),
                inputs.tf32,
                inputs.split,
                self.dtype.into(),
            );
        }
    }
}

/// The fused forward: returns the output `[b, n, h, d]` in the inputs' dtype and the LSE
/// `[b, n, h]` in `f32`.
///
/// `padding` is the key padding mask as floats of the inputs' dtype (1 = padded), `[b, n]`.
/// With `order`, the call attends along it ([`SequenceOrder`]): every row is read and written
/// at its token's place, so the tensors keep their layout.
///
/// # Errors
/// Shape and config errors of the reference path.
pub(crate) fn forward<R: CubeRuntime>(
    query: CubeTensor<R>,
    key: CubeTensor<R>,
    value: CubeTensor<R>,
    padding: Option<CubeTensor<R>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    #[cfg(feature = "cuda")]
    super::compile_options::install();
    let call = Call::new(&query, &key, &value, padding.as_ref(), config, order)?;
    let output = call.empty_like_input();
    let lse = call.empty_rows_f32();
    let has_padding = padding.is_some();
    let padding = padding.unwrap_or_else(|| query.clone());
    if let Some(key_tile) = tf32_tile(&call.client, call.dtype, call.shape.head_dim, 64) {
        let [query, key, value] = [query, key, value].map(unit_last_stride);
        let width = load_width(
            &call.client,
            &[&query, &key, &value, &output],
            call.shape.head_dim,
            call.dtype.size(),
        );
        // SAFETY: `tf32_tile` checked the plane size and operations, the
        // manual MMA m16n8k8 TF32 and `cp.async`; the cube has 4 planes of 32 units.
        unsafe {
            call.launch_forward_mma(
                [query, key, value],
                padding,
                [&output, &lse],
                width,
                key_tile,
                config,
                has_padding,
                MmaInputs::tf32(config),
            )
        };
        return Ok((output, lse));
    }
    if let KernelVariant::TensorCore { tile: key_tile } =
        kernel_variant(&call.client, call.dtype, call.shape.head_dim, 1, 64)
    {
        debug_assert_eq!(call.plan.block_rows, TENSOR_CORE_BLOCK_ROWS);
        let [query, key, value] = [query, key, value].map(unit_last_stride);
        let width = load_width(
            &call.client,
            &[&query, &key, &value, &output],
            call.shape.head_dim,
            call.dtype.size(),
        );
        // `cp.async` copies 4, 8 or 16 bytes: two values at least.
        if let Some(mma_tile) =
            mma_forward_tile(&call.client, call.dtype, call.shape.head_dim).filter(|_| width >= 2)
        {
            // SAFETY: as below; `mma_forward_tile` checked the manual MMA, `ldmatrix` and
            // `cp.async`.
            unsafe {
                call.launch_forward_mma(
                    [query, key, value],
                    padding,
                    [&output, &lse],
                    width,
                    mma_tile,
                    config,
                    has_padding,
                    MmaInputs::HALVES,
                )
            };
            return Ok((output, lse));
        }
        // SAFETY: as below; the cube has 4 planes of 32 units, the variant's requirements
        // (dtype, head_dim, plane size, cmma) were checked by `kernel_variant`.
        unsafe {
            dilated_flash_forward_tensor_core::launch_unchecked::<R>(
                &call.client,
                call.cube_count(),
                CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32),
                width,
                query.into_tensor_arg(),
                key.into_tensor_arg(),
                value.into_tensor_arg(),
                padding.into_tensor_arg(),
                call.table(),
                call.order(),
                output.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                call.scale,
                f32::NEG_INFINITY,
                key_tile,
                call.shape.head_dim,
                config.causal,
                has_padding,
                call.ordered(),
                call.dtype.into(),
            )
        };
        return Ok((output, lse));
    }
    // SAFETY: every index the kernel forms is bounded by the tensors' shapes (rows < seq_len,
    // columns < head_dim, table entries written by `LaunchPlan`).
    unsafe {
        dilated_flash_forward::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            call.cube_dim(),
            query.into_tensor_arg(),
            key.into_tensor_arg(),
            value.into_tensor_arg(),
            padding.into_tensor_arg(),
            call.table(),
            call.order(),
            output.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            call.scale,
            f32::NEG_INFINITY,
            call.plan.block_rows,
            call.tile,
            call.shape.head_dim,
            config.causal,
            has_padding,
            call.ordered(),
            call.dtype.into(),
        )
    };
    Ok((output, lse))
}

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
/// [`forward`]). The delta kernel runs on the tensors' own layout, which every other kernel
/// reads through the order like the rest.
///
/// # Errors
/// Shape and config errors of the reference path.
pub(crate) fn backward<R: CubeRuntime>(
    query: CubeTensor<R>,
    key: CubeTensor<R>,
    value: CubeTensor<R>,
    padding: Option<CubeTensor<R>>,
    inputs: BackwardInputs<R>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<[CubeTensor<R>; 3]> {
    #[cfg(feature = "cuda")]
    super::compile_options::install();
    let call = Call::new(&query, &key, &value, padding.as_ref(), config, order)?;
    let BackwardInputs {
        output,
        lse,
        grad_output,
        grad_lse,
    } = inputs;
    let delta = call.empty_rows_f32();
    let rows = call.shape.batch * call.shape.seq_len * call.shape.num_heads;
    let rows_per_cube = 32;
    let has_grad_lse = grad_lse.is_some();
    let grad_lse = grad_lse.unwrap_or_else(|| lse.clone());
    // SAFETY: `DELTA_PARTS` units per (batch, row, head); rows past `delta.len()` write nothing.
    unsafe {
        attention_delta::launch_unchecked::<R>(
            &call.client,
            CubeCount::Static(rows.div_ceil(rows_per_cube) as u32, 1, 1),
            CubeDim::new_1d((rows_per_cube * DELTA_PARTS) as u32),
            output.into_tensor_arg(),
            grad_output.clone().into_tensor_arg(),
            grad_lse.into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            call.shape.head_dim,
            rows_per_cube,
            has_grad_lse,
            call.dtype.into(),
        )
    };
    let grad_query = call.empty_like_input();
    let grad_key = call.empty_like_input();
    let grad_value = call.empty_like_input();
    let has_padding = padding.is_some();
    let padding = padding.unwrap_or_else(|| query.clone());
    let head_dim = call.shape.head_dim;
    let cube_dim = CubeDim::new_2d(32, TENSOR_CORE_PLANES as u32);
    // On TF32: the register-resident kernels with the forward's tiles for dQ and query tiles of
    // up to 32 for dK/dV (as below).
    if let (Some(key_tile), Some(query_tile)) = (
        tf32_tile(&call.client, call.dtype, head_dim, 64),
        tf32_tile(&call.client, call.dtype, head_dim, 32),
    ) {
        let [query, key, value, grad_output] =
            [query, key, value, grad_output].map(unit_last_stride);
        let width = load_width(
            &call.client,
            &[
                &query,
                &key,
                &value,
                &grad_output,
                &grad_query,
                &grad_key,
                &grad_value,
            ],
            head_dim,
            call.dtype.size(),
        );
        // SAFETY: as in `forward`'s TF32 launch.
        unsafe {
            call.launch_backward_mma(
                [query, key, value, grad_output],
                padding,
                [&lse, &delta],
                [&grad_query, &grad_key, &grad_value],
                width,
                [key_tile, query_tile],
                config,
                has_padding,
                MmaInputs::tf32(config),
            )
        };
        return Ok([grad_query, grad_key, grad_value]);
    }
    let query_variant = kernel_variant(&call.client, call.dtype, head_dim, 1, 64);
    // Query tiles of 32 for dK/dV: its registers (K, V, dK, dV and a tile of probabilities per
    // unit) bound its occupancy; 64 measured 255 registers, 2 cubes per SM.
    let key_value_variant = kernel_variant(&call.client, call.dtype, head_dim, 2, 32);
    if let (
        KernelVariant::TensorCore { tile: key_tile },
        KernelVariant::TensorCore { tile: query_tile },
    ) = (query_variant, key_value_variant)
    {
        let [query, key, value, grad_output] =
            [query, key, value, grad_output].map(unit_last_stride);
        let width = load_width(
            &call.client,
            &[
                &query,
                &key,
                &value,
                &grad_output,
                &grad_query,
                &grad_key,
                &grad_value,
            ],
            head_dim,
            call.dtype.size(),
        );
        if let Some(key_tile) =
            mma_forward_tile(&call.client, call.dtype, head_dim).filter(|_| width >= 2)
        {
            // SAFETY: as in `forward`'s register-resident launch. The key/value kernel walks
            // query tiles of 32 (two stages fit every head dim up to 128).
            unsafe {
                call.launch_backward_mma(
                    [query, key, value, grad_output],
                    padding,
                    [&lse, &delta],
                    [&grad_query, &grad_key, &grad_value],
                    width,
                    [key_tile, 32],
                    config,
                    has_padding,
                    MmaInputs::HALVES,
                )
            };
            return Ok([grad_query, grad_key, grad_value]);
        }
        // SAFETY: as in `forward`'s tensor-core launch.
        unsafe {
            dilated_flash_backward_query_tensor_core::launch_unchecked::<R>(
                &call.client,
                call.cube_count(),
                cube_dim,
                width,
                query.clone().into_tensor_arg(),
                key.clone().into_tensor_arg(),
                value.clone().into_tensor_arg(),
                padding.clone().into_tensor_arg(),
                grad_output.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                delta.clone().into_tensor_arg(),
                call.table(),
                call.order(),
                grad_query.clone().into_tensor_arg(),
                call.scale,
                key_tile,
                head_dim,
                config.causal,
                has_padding,
                call.ordered(),
                call.dtype.into(),
            );
            dilated_flash_backward_key_value_tensor_core::launch_unchecked::<R>(
                &call.client,
                call.cube_count(),
                cube_dim,
                width,
                query.into_tensor_arg(),
                key.into_tensor_arg(),
                value.into_tensor_arg(),
                padding.into_tensor_arg(),
                grad_output.into_tensor_arg(),
                lse.into_tensor_arg(),
                delta.into_tensor_arg(),
                call.table(),
                call.order(),
                grad_key.clone().into_tensor_arg(),
                grad_value.clone().into_tensor_arg(),
                call.scale,
                query_tile,
                head_dim,
                config.causal,
                has_padding,
                call.ordered(),
                call.dtype.into(),
            );
        }
        return Ok([grad_query, grad_key, grad_value]);
    }
    // SAFETY: as in `forward`.
    unsafe {
        dilated_flash_backward_query::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            call.cube_dim(),
            query.clone().into_tensor_arg(),
            key.clone().into_tensor_arg(),
            value.clone().into_tensor_arg(),
            padding.clone().into_tensor_arg(),
            grad_output.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            call.table(),
            call.order(),
            grad_query.clone().into_tensor_arg(),
            call.scale,
            call.plan.block_rows,
            call.tile,
            call.shape.head_dim,
            config.causal,
            has_padding,
            call.ordered(),
            call.dtype.into(),
        );
        dilated_flash_backward_key_value::launch_unchecked::<R>(
            &call.client,
            call.cube_count(),
            call.cube_dim(),
            query.into_tensor_arg(),
            key.into_tensor_arg(),
            value.into_tensor_arg(),
            padding.into_tensor_arg(),
            grad_output.into_tensor_arg(),
            lse.into_tensor_arg(),
            delta.into_tensor_arg(),
            call.table(),
            call.order(),
            grad_key.clone().into_tensor_arg(),
            grad_value.clone().into_tensor_arg(),
            call.scale,
            call.plan.block_rows,
            call.tile,
            call.shape.head_dim,
            config.causal,
            has_padding,
            call.ordered(),
            call.dtype.into(),
        );
    }
    Ok([grad_query, grad_key, grad_value])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_stages_hold_two_query_tiles_where_they_fit() {
        // bf16 at head dim 64: two stages of 64 queries and output gradients, 37.9 KB.
        assert_eq!(sub_tiles_within(SHARED_MEMORY_BUDGET, 2, 64, 32), 2);
        assert_eq!(sub_tiles_within(SHARED_MEMORY_BUDGET, 2, 80, 32), 2);
        // bf16 at 96 and 128 (54 KB, 70.7 KB) and f32 at 64 (74.8 KB) keep one tile a stage.
        assert_eq!(sub_tiles_within(SHARED_MEMORY_BUDGET, 2, 96, 32), 1);
        assert_eq!(sub_tiles_within(SHARED_MEMORY_BUDGET, 2, 128, 32), 1);
        assert_eq!(sub_tiles_within(SHARED_MEMORY_BUDGET, 4, 64, 32), 1);
        assert_eq!(sub_tiles_within(SHARED_MEMORY_BUDGET, 4, 16, 32), 2);
        // A device with less shared memory than the budget.
        assert_eq!(sub_tiles_within(32 * 1024, 2, 64, 32), 1);
    }
}
