//! The one place a call's kernel family is chosen: [`select`] resolves the strategy in force
//! (the config's, or [`KERNEL_ENV`](crate::KERNEL_ENV)) against what the call and the device
//! allow, and returns the family with its tile sizes. The launchers ([`super::forward`],
//! [`super::backward`]) and the public query
//! ([`kernel_choice`](crate::kernel_choice)) all go through it, so a query answers what a call
//! runs.

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::features::{MmaConfig, Plane};
use burn_cubecl::cubecl::ir::{ElemType, FloatKind, StorageType};
use burn_cubecl::cubecl::prelude::*;
use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, DilatedAttentionError, KernelChoice, KernelFamily,
    KernelStrategy, ProductPrecision, Result,
};

use super::cmma::forward::{PROBABILITY_PAD, SCRATCH_PAD};
use super::tensor_core::{KEY_PAD, TENSOR_CORE_PLANES};
use crate::batch_chunks::{MAX_FUSED_ELEMENTS, MAX_FUSED_GRID_YZ as MAX_GRID_YZ};
use crate::kernel_strategy;

/// Units (query rows) per cube of the portable kernels.
pub(crate) const BLOCK_ROWS: usize = 64;
/// Largest head dimension the fused kernels take (registers per unit grow with it).
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Largest head dimension of the tensor-core families (their fragments per plane grow with it).
const MAX_TENSOR_CORE_HEAD_DIM: usize = 128;

/// Shared memory the kernels allow themselves per cube (CUDA's static limit; lavapipe and many
/// Vulkan drivers allow 32 KiB, which the device's own limit caps this to).
pub(crate) const SHARED_MEMORY_BUDGET: usize = 48 * 1024;

/// The family a call runs, with its tile sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Core's reference path.
    Reference,
    /// The portable kernels ([`super::portable`]).
    Portable,
    /// The `cmma` kernels ([`super::cmma`]): keys per walked tile of the forward and `dQ`, and
    /// queries per walked tile of `dK`/`dV`.
    Cmma { key_tile: usize, query_tile: usize },
    /// The register-resident kernels ([`super::mma`]), tiles as for `Cmma`.
    Mma {
        key_tile: usize,
        query_tile: usize,
        inputs: MmaInputs,
    },
}

/// The products of a register-resident launch: `f16`/`bf16` on m16n8k16, or `f32` on TF32
/// (`split`: three TF32 products each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MmaInputs {
    pub tf32: bool,
    pub split: bool,
}

impl Family {
    /// The public description of the family and the precision of its products.
    pub(crate) fn choice(&self) -> KernelChoice {
        let (family, precision) = match self {
            Self::Reference => return KernelChoice::REFERENCE,
            Self::Portable => (KernelFamily::Portable, ProductPrecision::F32),
            Self::Cmma { .. } => (KernelFamily::Cmma, ProductPrecision::InputDtype),
            Self::Mma { inputs, .. } => (
                KernelFamily::Mma,
                match (inputs.tf32, inputs.split) {
                    (false, _) => ProductPrecision::InputDtype,
                    (true, false) => ProductPrecision::Tf32,
                    (true, true) => ProductPrecision::Tf32x3,
                },
            ),
        };
        KernelChoice { family, precision }
    }
}

/// The family a call with inputs of shape `dims` and `dtype` runs on `client`'s device: the
/// strategy in force ([`kernel_strategy`]), `Auto` resolved to the fastest family that can run
/// the call, in this order: register-resident (`mma`), `cmma`, portable, reference.
///
/// # Errors
/// [`DilatedAttentionError::KernelUnavailable`] when a forced family cannot run the call (with
/// what is missing); [`DilatedAttentionError::InvalidEnvironment`] for a bad
/// [`KERNEL_ENV`](crate::KERNEL_ENV).
pub(crate) fn select<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dims: [usize; 4],
    dtype: DType,
    config: &DilatedAttentionConfig,
) -> Result<Family> {
    let strategy = kernel_strategy(config)?;
    if strategy == KernelStrategy::Reference {
        return Ok(Family::Reference);
    }
    // A malformed call runs the reference path, whose checks report it.
    let Ok(shape) = AttentionShape::from_dims("query", &dims) else {
        return Ok(Family::Reference);
    };
    let device = Device {
        client,
        dtype,
        head_dim: shape.head_dim,
        config,
    };
    let unavailable =
        |reason: String| DilatedAttentionError::KernelUnavailable { strategy, reason };
    if let Some(reason) = outside_every_family(&shape) {
        return match strategy {
            KernelStrategy::Auto => {
                crate::fallback_log::warn_reference_fallback(&reason);
                Ok(Family::Reference)
            }
            _ => Err(unavailable(reason)),
        };
    }
    match strategy {
        KernelStrategy::Auto => Ok(device
            .mma()
            .or_else(|_| device.cmma())
            .unwrap_or(Family::Portable)),
        KernelStrategy::Portable => Ok(Family::Portable),
        KernelStrategy::Cmma => device.cmma().map_err(unavailable),
        KernelStrategy::Mma => device.mma().map_err(unavailable),
        KernelStrategy::Reference => Ok(Family::Reference),
    }
}

/// Why no fused family takes a call of `shape`, if none does.
fn outside_every_family(shape: &AttentionShape) -> Option<String> {
    let elements = shape.batch * shape.seq_len * shape.num_heads * shape.head_dim;
    if shape.head_dim > MAX_HEAD_DIM {
        Some(format!(
            "head_dim {} is above the kernels' {MAX_HEAD_DIM}",
            shape.head_dim
        ))
    } else if shape.num_heads > MAX_GRID_YZ || shape.batch > MAX_GRID_YZ {
        Some(format!(
            "{} heads and batch {}: the kernels take at most {MAX_GRID_YZ} of each",
            shape.num_heads, shape.batch
        ))
    } else if elements as u64 > MAX_FUSED_ELEMENTS {
        Some(format!(
            "{elements} elements per tensor: the kernels address fewer than 2^32 (calls split along the batch where one batch row fits)"
        ))
    } else {
        None
    }
}

/// What a call asks of the device.
struct Device<'a, R: CubeRuntime> {
    client: &'a ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    config: &'a DilatedAttentionConfig,
}

impl<R: CubeRuntime> Device<'_, R> {
    /// The register-resident family: on `f16`/`bf16`, keys per tile of the forward and `dQ`
    /// (64, or 32 where two stages of 64 do not fit the shared memory; each stage holds keys and
    /// values, the key bias and the memory rows of a call along an order) and query tiles of 32
    /// for `dK`/`dV`; on `f32`, TF32 tiles of 64, 32 or 16 rows whose two stages (two `f32` row
    /// tiles and three `f32` values a row) fit.
    fn mma(&self) -> std::result::Result<Family, String> {
        self.tensor_core_call()?;
        let features = self.client.features();
        let shared = self.shared_memory();
        if self.dtype == DType::F32 {
            let tf32: StorageType = ElemType::Float(FloatKind::TF32).into();
            if !features.matmul.mma.contains(&mma_config(tf32, 16, 8, 8)) {
                return Err("the device has no manual MMA m16n8k8 for TF32 into f32".into());
            }
            if !features.copy_async {
                return Err("the device has no cp.async".into());
            }
            let tile = |largest: usize| {
                [64, 32, 16].into_iter().find(|&tile| {
                    tile <= largest && two_stages_bytes(tile, self.head_dim, 4, 3) <= shared
                })
            };
            return match (tile(64), tile(32)) {
                (Some(key_tile), Some(query_tile)) => Ok(Family::Mma {
                    key_tile,
                    query_tile,
                    inputs: MmaInputs {
                        tf32: true,
                        split: !self.config.allow_tf32,
                    },
                }),
                _ => Err(format!(
                    "two stages of 16 f32 rows at head_dim {} exceed the {shared} bytes of shared memory",
                    self.head_dim
                )),
            };
        }
        self.cmma()?;
        let half = self.half_type()?;
        if !features.matmul.mma.contains(&mma_config(half, 16, 16, 8)) {
            return Err(format!(
                "the device has no manual MMA m16n8k16 for {:?}",
                self.dtype
            ));
        }
        if !features.matmul.ldmatrix.contains(&half) {
            return Err(format!("the device has no ldmatrix for {:?}", self.dtype));
        }
        if !features.copy_async {
            return Err("the device has no cp.async".into());
        }
        [64, 32]
            .into_iter()
            .find(|&tile| two_stages_bytes(tile, self.head_dim, 2, 2) <= shared)
            .map(|key_tile| Family::Mma {
                key_tile,
                query_tile: 32,
                inputs: MmaInputs {
                    tf32: false,
                    split: false,
                },
            })
            .ok_or_else(|| {
                format!(
                    "two stages of 32 keys at head_dim {} exceed the {shared} bytes of shared memory",
                    self.head_dim
                )
            })
    }

    /// The `cmma` family: `f16`/`bf16` with `cmma` 16x16x16 into `f32`; the largest walked tile
    /// of 64, 32 or 16 rows whose shared memory fits, up to 64 keys for the forward and `dQ`
    /// (one per-row value: the key bias) and up to 32 queries for `dK`/`dV` (two: the queries'
    /// LSE and delta; its registers bound its occupancy).
    fn cmma(&self) -> std::result::Result<Family, String> {
        self.tensor_core_call()?;
        let half = self.half_type()?;
        let f32_type: StorageType = ElemType::Float(FloatKind::F32).into();
        let wanted = MmaConfig {
            a_type: half,
            b_type: half,
            cd_type: f32_type,
            m: 16,
            k: 16,
            n: 16,
        };
        if !self.client.features().matmul.cmma.contains(&wanted) {
            return Err(format!(
                "the device has no cmma 16x16x16 for {:?}",
                self.dtype
            ));
        }
        let shared = self.shared_memory();
        let tile = |largest: usize, row_values: usize| {
            [64, 32, 16].into_iter().find(|&tile| {
                tile <= largest && cmma_shared_bytes(tile, self.head_dim, row_values) <= shared
            })
        };
        match (tile(64, 1), tile(32, 2)) {
            (Some(key_tile), Some(query_tile)) => Ok(Family::Cmma {
                key_tile,
                query_tile,
            }),
            _ => Err(format!(
                "tiles of 16 rows at head_dim {} exceed the {shared} bytes of shared memory",
                self.head_dim
            )),
        }
    }

    /// What both tensor-core families need: a head dimension that is a multiple of 16 up to 128,
    /// a runtime other than WGPU, and 32-unit planes with plane operations.
    ///
    /// Not on WGPU: WGSL has no `cmma`, and the `cmma` kernels compiled to SPIR-V (burn's
    /// `vulkan` feature) crashed the process in NVIDIA's Vulkan driver (segfault, driver
    /// 580.159.04, f16), so WGPU runs the portable kernels.
    fn tensor_core_call(&self) -> std::result::Result<(), String> {
        if !self.head_dim.is_multiple_of(16) || self.head_dim > MAX_TENSOR_CORE_HEAD_DIM {
            return Err(format!(
                "head_dim {} is not a multiple of 16 up to {MAX_TENSOR_CORE_HEAD_DIM}",
                self.head_dim
            ));
        }
        if R::name(self.client).starts_with("wgpu") {
            return Err("the WGPU runtime runs the portable kernels only".into());
        }
        let properties = self.client.properties();
        let hardware = &properties.hardware;
        if hardware.plane_size_min != 32 || hardware.plane_size_max != 32 {
            return Err(format!(
                "planes of {}-{} units; the tensor-core kernels need 32",
                hardware.plane_size_min, hardware.plane_size_max
            ));
        }
        if !self.client.features().plane.contains(Plane::Ops) {
            return Err("the device has no plane operations".into());
        }
        Ok(())
    }

    /// The CubeCL type of `f16`/`bf16` inputs.
    fn half_type(&self) -> std::result::Result<StorageType, String> {
        match self.dtype {
            DType::F16 => Ok(ElemType::Float(FloatKind::F16).into()),
            DType::BF16 => Ok(ElemType::Float(FloatKind::BF16).into()),
            other => Err(format!(
                "{other:?} inputs; the family takes f16 and bf16 (the mma family also f32)"
            )),
        }
    }

    fn shared_memory(&self) -> usize {
        SHARED_MEMORY_BUDGET.min(self.client.properties().hardware.max_shared_memory_size)
    }
}

fn mma_config(operand: StorageType, m: u32, k: u32, n: u32) -> MmaConfig {
    MmaConfig {
        a_type: operand,
        b_type: operand,
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m,
        k,
        n,
    }
}

/// Shared memory of a `cmma` kernel for walked tiles of `tile` rows: two row tiles (keys and
/// values; queries and output gradients) and the per-plane probabilities in the inputs' dtype
/// (2 bytes), the per-plane `f32` scratch and `row_values` `f32` columns (the key bias; the
/// queries' LSE and delta).
fn cmma_shared_bytes(tile: usize, head_dim: usize, row_values: usize) -> usize {
    2 * tile * (head_dim + KEY_PAD) * 2
        + TENSOR_CORE_PLANES * 16 * (tile + PROBABILITY_PAD) * 2
        + TENSOR_CORE_PLANES * 16 * (tile + SCRATCH_PAD) * 4
        + row_values * tile * 4
}

/// Shared memory of a register-resident kernel's two stages of `rows` rows: two row tiles
/// (`head_dim + KEY_PAD` values of `element_size` bytes a row) and `f32_per_row` `f32` values
/// per row (the key bias, or the queries' `-LSE` and delta, and the memory rows of a call along
/// an order).
pub(crate) fn two_stages_bytes(
    rows: usize,
    head_dim: usize,
    element_size: usize,
    f32_per_row: usize,
) -> usize {
    2 * (2 * rows * (head_dim + KEY_PAD) * element_size + f32_per_row * rows * size_of::<f32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_outside_the_kernels_name_the_limit() {
        let shape = |dims: [usize; 4]| AttentionShape::from_dims("query", &dims).unwrap();
        assert_eq!(outside_every_family(&shape([2, 97, 3, 256])), None);
        let wide = outside_every_family(&shape([1, 8, 2, 320])).unwrap();
        assert_eq!(wide, "head_dim 320 is above the kernels' 256");
        assert!(outside_every_family(&shape([1, 8, 70_000, 8])).is_some());
        assert!(outside_every_family(&shape([1 << 12, 1 << 12, 16, 16])).is_some());
    }
}
