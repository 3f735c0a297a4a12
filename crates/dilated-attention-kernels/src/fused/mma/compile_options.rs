//! Per-kernel NVRTC options for the register-resident kernels (feature `nvrtc-options`), through
//! the patched cubecl-cuda's `set_kernel_options_hook` (CubeCL 0.10 passes NVRTC a fixed option
//! list; the patch is `vendor/nvrtc-kernel-options.patch`, the patched crate
//! `vendor/cubecl-cuda`).
//!
//! By default our three register-resident kernels get both options below;
//! [`NVRTC_OPTIONS_ENV`] overrides the list, comma-separated, and `none` turns them off:
//! - `ftz`: `--ftz=true` (single-precision denormals flushed to zero: the exponential without
//!   its denormal handling);
//! - `blocks4`: at least 4 resident cubes per SM in the kernel's launch bounds, which caps the
//!   128-unit cubes at 128 registers (NVRTC's `--maxrregcount` does not reach the PTX that the
//!   driver compiles). Not for the `f32` (TF32) kernels, whose operands take two or three times
//!   the registers: capped, they spill.
//!
//! Only our kernels get them: every other kernel (Burn's) compiles as before.

use std::sync::Once;

use burn_cubecl::cubecl::cuda::KernelCompileOptions;
use dilated_attention_core::{DilatedAttentionError, Result};

use crate::NVRTC_OPTIONS_ENV;

/// The options when [`NVRTC_OPTIONS_ENV`] is unset.
const DEFAULT_SETTING: &str = "ftz,blocks4";

/// The values the variable takes.
const NAMES: &str = "ftz, blocks4 (comma-separated), none";

/// Entry-point prefixes of the kernels the options apply to.
const OUR_KERNELS: [&str; 3] = [
    "dilated_flash_forward_mma",
    "dilated_flash_backward_query_mma",
    "dilated_flash_backward_key_value_mma",
];

/// The options a setting asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Setting {
    ftz: bool,
    blocks4: bool,
}

impl Setting {
    /// Parses a value of [`NVRTC_OPTIONS_ENV`]: `none`, or a comma-separated list of `ftz` and
    /// `blocks4`.
    fn parse(value: &str) -> Result<Self> {
        let mut setting = Self::default();
        if value.trim().eq_ignore_ascii_case("none") {
            return Ok(setting);
        }
        for item in value.split(',') {
            match item.trim().to_ascii_lowercase().as_str() {
                "ftz" => setting.ftz = true,
                "blocks4" => setting.blocks4 = true,
                _ => {
                    return Err(DilatedAttentionError::InvalidEnvironment {
                        variable: NVRTC_OPTIONS_ENV,
                        value: value.to_string(),
                        expected: NAMES,
                    });
                }
            }
        }
        Ok(setting)
    }

    /// The setting in force: the variable's value, or [`DEFAULT_SETTING`] when it is unset.
    fn from_env() -> Result<Self> {
        Self::parse(
            &std::env::var(NVRTC_OPTIONS_ENV).unwrap_or_else(|_| DEFAULT_SETTING.to_string()),
        )
    }

    /// What the kernel named `name` gets. CubeCL names an entry point after the kernel and its
    /// generics: `dilated_flash_forward_mma_f_bf16_n_8`.
    fn options_for(&self, name: &str) -> KernelCompileOptions {
        let mut options = KernelCompileOptions::default();
        if !OUR_KERNELS.iter().any(|prefix| name.starts_with(prefix)) {
            return options;
        }
        if self.ftz {
            options.nvrtc.push("--ftz=true".to_string());
        }
        if self.blocks4 && !name.contains("_f_f32") {
            options.min_blocks_per_sm = Some(4);
        }
        options
    }
}

fn hook(name: &str) -> KernelCompileOptions {
    // `install` checked the variable before installing the hook.
    Setting::from_env().unwrap_or_default().options_for(name)
}

/// Checks [`NVRTC_OPTIONS_ENV`] and installs the hook once per process, unless the setting asks
/// for no options.
///
/// # Errors
/// [`DilatedAttentionError::InvalidEnvironment`] for an unknown value.
pub(crate) fn install() -> Result<()> {
    static INSTALL: Once = Once::new();
    let setting = Setting::from_env()?;
    INSTALL.call_once(|| {
        if setting != Setting::default() {
            burn_cubecl::cubecl::cuda::set_kernel_options_hook(hook);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reach_our_kernels_only() {
        let both = Setting::parse(DEFAULT_SETTING).unwrap();
        let options = both.options_for("dilated_flash_forward_mma_f_bf16_n_8");
        assert_eq!(options.nvrtc, ["--ftz=true"]);
        assert_eq!(options.min_blocks_per_sm, Some(4));
        let tf32 = both.options_for("dilated_flash_backward_key_value_mma_f_f32_n_4");
        assert_eq!(tf32.nvrtc, ["--ftz=true"]);
        assert_eq!(tf32.min_blocks_per_sm, None);
        let blocks = Setting::parse("blocks4").unwrap();
        let options = blocks.options_for("dilated_flash_backward_query_mma_f_f16_n_8");
        assert!(options.nvrtc.is_empty());
        assert_eq!(options.min_blocks_per_sm, Some(4));
        assert_eq!(
            both.options_for("matmul_kernel"),
            KernelCompileOptions::default()
        );
        let none = Setting::parse(" None").unwrap();
        assert_eq!(
            none.options_for("dilated_flash_forward_mma_f_bf16_n_8"),
            KernelCompileOptions::default()
        );
    }

    #[test]
    fn unknown_options_are_errors() {
        for bad in ["", "unknown", "ftz,fast"] {
            assert!(
                matches!(
                    Setting::parse(bad),
                    Err(DilatedAttentionError::InvalidEnvironment { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
