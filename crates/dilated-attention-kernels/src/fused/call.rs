//! What every launch of one call shares ([`Call`]: checked shape, launch plan and its table on
//! the device, scale, sequence order, client), the device copies of sequence orders, and the
//! layout helpers of the tensor-core launches.

use std::sync::{Mutex, Weak};

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, DilatedAttentionError, KernelStrategy, Result,
    SequenceOrder,
};

use super::kernel_args::RowPlanLaunch;
use super::launch_plan::LaunchPlan;
use super::strategy::{BLOCK_ROWS, SHARED_MEMORY_BUDGET};
use crate::backend::check_fused_call;

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

/// What every launch of one call shares.
pub(crate) struct Call<R: CubeRuntime> {
    pub shape: AttentionShape,
    pub plan: LaunchPlan,
    /// The plan's table, uploaded once per call and shared by its launches.
    table: Handle,
    /// The sequence order the call attends along (`u32` per position; see [`device_order`]).
    order: Option<(Handle, usize)>,
    pub scale: f32,
    pub tile: usize,
    pub client: ComputeClient<R>,
    pub device: R::Device,
    pub dtype: DType,
    /// Whether keys are hidden after the query (the config's `causal`).
    pub causal: bool,
    /// Whether the call has a key padding mask.
    pub has_padding: bool,
}

impl<R: CubeRuntime> Call<R> {
    pub(crate) fn new(
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
        let tile = portable_key_tile(
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
            causal: config.causal,
            has_padding: padding.is_some(),
        })
    }

    pub(crate) fn empty(&self, dims: Vec<usize>, dtype: DType) -> CubeTensor<R> {
        empty_device_dtype(
            self.client.clone(),
            self.device.clone(),
            Shape::from(dims),
            dtype,
        )
    }

    pub(crate) fn empty_like_input(&self) -> CubeTensor<R> {
        self.empty(self.shape.dims().to_vec(), self.dtype)
    }

    pub(crate) fn empty_rows_f32(&self) -> CubeTensor<R> {
        let AttentionShape {
            batch,
            seq_len,
            num_heads,
            ..
        } = self.shape;
        self.empty(vec![batch, seq_len, num_heads], DType::F32)
    }

    pub(crate) fn table(&self) -> ArrayArg<R> {
        // SAFETY: the handle holds exactly `plan.table.len()` u32 values.
        unsafe { ArrayArg::from_raw_parts(self.table.clone(), self.plan.table.len()) }
    }

    /// The call's sequence order; the table stands in (never read) for a call without one.
    pub(crate) fn order(&self) -> ArrayArg<R> {
        match &self.order {
            // SAFETY: the handle holds exactly `len` u32 values.
            Some((handle, len)) => unsafe { ArrayArg::from_raw_parts(handle.clone(), *len) },
            None => self.table(),
        }
    }

    /// The table and the order as one kernel argument.
    pub(crate) fn row_plan(&self) -> RowPlanLaunch<R> {
        RowPlanLaunch::new(self.table(), self.order())
    }

    /// Whether the kernels read rows through [`Self::order`].
    pub(crate) fn ordered(&self) -> bool {
        self.order.is_some()
    }

    pub(crate) fn cube_count(&self) -> CubeCount {
        CubeCount::Static(
            self.plan.blocks_x,
            self.shape.num_heads as u32,
            self.shape.batch as u32,
        )
    }

    pub(crate) fn cube_dim(&self) -> CubeDim {
        CubeDim::new_1d(self.plan.block_rows as u32)
    }

    /// The tensor-core launches' inputs with a contiguous last dimension, and their load width
    /// ([`load_width`], with `outputs`): inputs whose strides or offsets allow fewer than `least`
    /// values a load are copied to a fresh contiguous layout first.
    ///
    /// # Errors
    /// [`DilatedAttentionError::KernelUnavailable`] when even contiguous tensors load fewer than
    /// `least` values at a time on this device.
    pub(crate) fn staged<const N: usize>(
        &self,
        inputs: [CubeTensor<R>; N],
        outputs: &[&CubeTensor<R>],
        least: usize,
    ) -> Result<([CubeTensor<R>; N], usize)> {
        let width_of = |inputs: &[CubeTensor<R>; N]| {
            let mut tensors: Vec<&CubeTensor<R>> = inputs.iter().collect();
            tensors.extend_from_slice(outputs);
            load_width(
                &self.client,
                &tensors,
                self.shape.head_dim,
                self.dtype.size(),
            )
        };
        let inputs = inputs.map(unit_last_stride);
        let width = width_of(&inputs);
        if width >= least {
            return Ok((inputs, width));
        }
        let inputs = inputs.map(into_contiguous);
        let width = width_of(&inputs);
        if width >= least {
            Ok((inputs, width))
        } else {
            Err(DilatedAttentionError::KernelUnavailable {
                strategy: KernelStrategy::Mma,
                reason: format!(
                    "the device loads {width} value(s) of {} bytes at a time; cp.async needs {least}",
                    self.dtype.size()
                ),
            })
        }
    }
}

/// Key rows per shared-memory tile: the largest power of two up to 64 whose key and value
/// tiles (`f32`), two per-row values (visibility; LSE and delta in the backward) and a column
/// of per-unit scores fit the device's shared memory.
pub(crate) fn portable_key_tile(head_dim: usize, device_shared_memory: usize) -> usize {
    let budget = SHARED_MEMORY_BUDGET.min(device_shared_memory);
    let bytes_per_key = (2 * head_dim + 2 + BLOCK_ROWS) * size_of::<f32>();
    let mut tile = 64;
    while tile > 1 && tile * bytes_per_key > budget {
        tile /= 2;
    }
    tile
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
