//! Per-kernel NVRTC options for the register-resident kernels, through the patched cubecl-cuda's
//! `set_kernel_options_hook` (CubeCL 0.10 passes NVRTC a fixed option list; the patch is in
//! `vendor/cubecl-cuda`, see `docs/patches/nvrtc-kernel-options.patch`).
//!
//! By default our three register-resident kernels get both options below: on an H100 they took
//! 3-5% off the forward and 8-10% off forward+backward from 131K tokens
//! (`docs/results/instruction-budget-h100.md`). [`NVRTC_OPTIONS_ENV`] overrides the list,
//! comma-separated; `none` (or an empty value) turns them off:
//! - `ftz`: `--ftz=true` (the exponential without its denormal handling);
//! - `blocks4`: at least 4 resident cubes per SM in the kernel's launch bounds, which caps the
//!   128-unit cubes at 128 registers (NVRTC's `--maxrregcount` does not reach the PTX that the
//!   driver compiles). Not for the `f32` (TF32) kernels, whose operands take twice the registers
//!   (three times with a residual): capped, their forward+backward took 1.3-1.7x as long on an
//!   H100 (`docs/results/tf32-h100.md`).
//!
//! Only our kernels get them: every other kernel (Burn's) compiles as before.

use std::sync::Once;

use burn_cubecl::cubecl::cuda::KernelCompileOptions;

/// Environment variable that overrides the compiler options of the register-resident CUDA
/// kernels (read once per process): a comma-separated list of `ftz` and `blocks4`, or `none`.
/// Unset: both.
///
/// ```
/// assert_eq!(dilated_attention_kernels::NVRTC_OPTIONS_ENV, "DILATED_ATTENTION_NVRTC");
/// ```
pub const NVRTC_OPTIONS_ENV: &str = "DILATED_ATTENTION_NVRTC";

/// The options when [`NVRTC_OPTIONS_ENV`] is unset.
const DEFAULT_SETTING: &str = "ftz,blocks4";

/// Entry-point prefixes of the kernels the options apply to.
const OUR_KERNELS: [&str; 3] = [
    "dilated_flash_forward_mma",
    "dilated_flash_backward_query_mma",
    "dilated_flash_backward_key_value_mma",
];

/// What the kernel named `name` gets from `setting` (the variable's value). CubeCL names an
/// entry point after the kernel and its generics: `dilated_flash_forward_mma_f_bf16_n_8`.
pub(crate) fn options_for(name: &str, setting: &str) -> KernelCompileOptions {
    let mut options = KernelCompileOptions::default();
    if !OUR_KERNELS.iter().any(|prefix| name.starts_with(prefix)) {
        return options;
    }
    let tf32 = name.contains("_f_f32");
    for item in setting.split(',') {
        match item.trim() {
            "ftz" => options.nvrtc.push("--ftz=true".to_string()),
            "blocks4" if !tf32 => options.min_blocks_per_sm = Some(4),
            _ => {}
        }
    }
    options
}

/// The setting in force: the variable's value, or [`DEFAULT_SETTING`] when it is unset.
fn setting() -> String {
    std::env::var(NVRTC_OPTIONS_ENV).unwrap_or_else(|_| DEFAULT_SETTING.to_string())
}

fn hook(name: &str) -> KernelCompileOptions {
    options_for(name, &setting())
}

/// Installs the hook once per process, unless the setting asks for no options.
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let setting = setting();
        if !matches!(setting.trim(), "" | "none") {
            burn_cubecl::cubecl::cuda::set_kernel_options_hook(hook);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reach_our_kernels_only() {
        let both = options_for("dilated_flash_forward_mma_f_bf16_n_8", DEFAULT_SETTING);
        assert_eq!(both.nvrtc, ["--ftz=true"]);
        assert_eq!(both.min_blocks_per_sm, Some(4));
        let tf32 = options_for(
            "dilated_flash_backward_key_value_mma_f_f32_n_4",
            DEFAULT_SETTING,
        );
        assert_eq!(tf32.nvrtc, ["--ftz=true"]);
        assert_eq!(tf32.min_blocks_per_sm, None);
        let blocks = options_for("dilated_flash_backward_query_mma_f_f16_n_8", "blocks4");
        assert!(blocks.nvrtc.is_empty());
        assert_eq!(blocks.min_blocks_per_sm, Some(4));
        assert_eq!(
            options_for("matmul_kernel", "ftz,blocks4"),
            KernelCompileOptions::default()
        );
        for off in ["none", "", "unknown"] {
            assert_eq!(
                options_for("dilated_flash_forward_mma_f_bf16_n_8", off),
                KernelCompileOptions::default()
            );
        }
    }
}
