//! Which implementation runs a call: the [`KernelStrategy`] a config asks for, and the
//! [`KernelChoice`] a backend answers for given shapes, dtype and device.
//!
//! ```
//! use dilated_attention_core::{DilatedAttentionConfig, KernelStrategy};
//!
//! let cfg = DilatedAttentionConfig::new(vec![64], vec![1])
//!     .with_kernel_strategy(KernelStrategy::Portable);
//! assert_eq!(cfg.kernel_strategy, KernelStrategy::Portable);
//! assert_eq!("mma".parse::<KernelStrategy>(), Ok(KernelStrategy::Mma));
//! assert!("fast".parse::<KernelStrategy>().is_err());
//! ```

use burn::config::Config;

/// Which kernel family a call asks for (`DilatedAttentionConfig::kernel_strategy`; the
/// environment variable `DILATED_ATTENTION_KERNEL` overrides it).
///
/// A family forced here that cannot run a call (the backend has no kernels, the device lacks the
/// instructions, the dtype or head dimension is outside the family's range) is an error
/// ([`KernelUnavailable`](crate::DilatedAttentionError::KernelUnavailable)), never a silent
/// detour.
#[derive(Config, Debug, Copy, PartialEq, Eq, Hash)]
pub enum KernelStrategy {
    /// The fastest family the backend, device, dtype and head dimension allow; the reference path
    /// on backends without kernels and for calls no family takes (dropout while training, head
    /// dimension above 256, more than 65,535 heads or batches, 2^32 elements or more).
    Auto,
    /// The reference path (plain Burn tensor ops) on every backend.
    Reference,
    /// The portable fused kernels: scalar FMAs in `f32` on shared-memory tiles, every CubeCL
    /// runtime (CUDA, WGPU, ...), every float dtype.
    Portable,
    /// The `cmma` tensor-core kernels: `f16`/`bf16`, head dimension a multiple of 16 up to 128,
    /// 32-unit planes with plane operations and `cmma` 16x16x16 (CUDA on Volta and later).
    Cmma,
    /// The register-resident `mma.sync` kernels: `f16`/`bf16` on m16n8k16 with `ldmatrix`, or
    /// `f32` on TF32 m16n8k8 (three products each unless `allow_tf32`), head dimension a
    /// multiple of 16 up to 128, `cp.async` (CUDA on Ampere and later).
    Mma,
}

impl KernelStrategy {
    /// The names `DILATED_ATTENTION_KERNEL` takes, in the order of the variants.
    pub const NAMES: &'static str = "auto, reference, portable, cmma, mma";
}

impl std::str::FromStr for KernelStrategy {
    type Err = ();

    /// Parses a strategy's lowercase name ([`Self::NAMES`]), ignoring surrounding whitespace
    /// and case.
    fn from_str(name: &str) -> Result<Self, ()> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "reference" => Ok(Self::Reference),
            "portable" => Ok(Self::Portable),
            "cmma" => Ok(Self::Cmma),
            "mma" => Ok(Self::Mma),
            _ => Err(()),
        }
    }
}

/// The implementation that runs a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelFamily {
    /// Core's reference path on the backend's tensor ops.
    Reference,
    /// The portable fused kernels.
    Portable,
    /// The `cmma` tensor-core kernels.
    Cmma,
    /// The register-resident `mma.sync` kernels.
    Mma,
}

/// The operands of the score (`Q K^T`) and output (`P V`) products of a call; accumulation is
/// `f32` in every fused family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProductPrecision {
    /// The inputs' own dtype: the reference path's tensor ops, and the tensor-core families on
    /// `f16`/`bf16` inputs.
    InputDtype,
    /// `f32` (the portable kernels convert every input to `f32`).
    F32,
    /// One TF32 product (10-bit mantissa operands), `f32` inputs with `allow_tf32`.
    Tf32,
    /// Three TF32 products per product ("3xTF32"): about `f32` accuracy, `f32` inputs.
    Tf32x3,
}

/// What runs a call: the family and the precision of its products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelChoice {
    /// The implementation.
    pub family: KernelFamily,
    /// The operands of its products.
    pub precision: ProductPrecision,
}

impl KernelChoice {
    /// The reference path, in the inputs' dtype.
    pub const REFERENCE: Self = Self {
        family: KernelFamily::Reference,
        precision: ProductPrecision::InputDtype,
    };

    /// Whether the call runs fused kernels.
    pub fn is_fused(&self) -> bool {
        self.family != KernelFamily::Reference
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_name_parses_and_others_do_not() {
        let parsed: Vec<_> = KernelStrategy::NAMES
            .split(", ")
            .map(|name| name.parse::<KernelStrategy>())
            .collect();
        assert_eq!(
            parsed,
            [
                Ok(KernelStrategy::Auto),
                Ok(KernelStrategy::Reference),
                Ok(KernelStrategy::Portable),
                Ok(KernelStrategy::Cmma),
                Ok(KernelStrategy::Mma),
            ]
        );
        assert_eq!(" CMMA\n".parse(), Ok(KernelStrategy::Cmma));
        for bad in ["", "tensor_core", "portable,cmma", "mma.sync"] {
            assert_eq!(bad.parse::<KernelStrategy>(), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn only_the_reference_family_is_not_fused() {
        assert!(!KernelChoice::REFERENCE.is_fused());
        let mma = KernelChoice {
            family: KernelFamily::Mma,
            precision: ProductPrecision::Tf32x3,
        };
        assert!(mma.is_fused());
    }
}
