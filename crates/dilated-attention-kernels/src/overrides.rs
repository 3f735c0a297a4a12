//! The environment variables that override this library's settings, all in one place. Each is
//! read at every call; a value the library does not know is an
//! [`InvalidEnvironment`](DilatedAttentionError::InvalidEnvironment) error from that call, never
//! ignored.
//!
//! | variable | values | default |
//! | --- | --- | --- |
//! | [`KERNEL_ENV`] | `auto`, `reference`, `portable`, `cmma`, `mma` | unset: the config's `kernel_strategy` |
//! | [`SUBMIT_ENV`] | `background`, `eager`, `lazy` | `background` |
//! | [`NVRTC_OPTIONS_ENV`] (feature `nvrtc-options`) | `ftz`, `blocks4` (comma-separated), or `none` | `ftz,blocks4` |
//!
//! ```
//! use dilated_attention_core::{DilatedAttentionConfig, KernelStrategy};
//! use dilated_attention_kernels::{KERNEL_ENV, SUBMIT_ENV, kernel_strategy};
//!
//! assert_eq!(KERNEL_ENV, "DILATED_ATTENTION_KERNEL");
//! assert_eq!(SUBMIT_ENV, "DILATED_ATTENTION_SUBMIT");
//! let cfg = DilatedAttentionConfig::new(vec![64], vec![1]);
//! // Without the variable, the config's strategy.
//! # if std::env::var_os(KERNEL_ENV).is_none() {
//! assert_eq!(kernel_strategy(&cfg)?, KernelStrategy::Auto);
//! # }
//! # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
//! ```

use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, KernelStrategy, Result,
};

/// Overrides every config's [`KernelStrategy`] (for comparisons and for isolating a fault):
/// `auto`, `reference`, `portable`, `cmma` or `mma`, case-insensitive.
pub const KERNEL_ENV: &str = "DILATED_ATTENTION_KERNEL";

/// When a call's launches are submitted to the device (CUDA and WGPU): `background` (the
/// default) flushes Fusion's queue without waiting for its thread, which runs our operation and
/// flushes CubeCL's queue, so the device starts on the call while the caller goes on; `eager`
/// flushes both queues and waits for each thread (device errors then reach the calling thread);
/// `lazy` leaves the launches in Burn's queues until the caller's next sync or read (the fewest
/// host cycles for many small calls issued back to back). On a bare `CubeBackend` there is no
/// Fusion thread, and background is eager.
pub const SUBMIT_ENV: &str = "DILATED_ATTENTION_SUBMIT";

/// The per-kernel NVRTC options of the register-resident CUDA kernels (feature
/// `nvrtc-options`, read once per process): a comma-separated list of `ftz` (`--ftz=true`) and
/// `blocks4` (at least 4 resident cubes per SM in the kernel's launch bounds; not for the `f32`
/// TF32 kernels), or `none`.
pub const NVRTC_OPTIONS_ENV: &str = "DILATED_ATTENTION_NVRTC";

/// The strategy in force for a call with `config`: [`KERNEL_ENV`] when it is set, else the
/// config's `kernel_strategy`.
///
/// # Errors
/// [`DilatedAttentionError::InvalidEnvironment`] when the variable holds another value.
pub fn kernel_strategy(config: &DilatedAttentionConfig) -> Result<KernelStrategy> {
    match std::env::var(KERNEL_ENV) {
        Ok(value) => value
            .parse()
            .map_err(|()| invalid(KERNEL_ENV, value, KernelStrategy::NAMES)),
        Err(_) => Ok(config.kernel_strategy),
    }
}

/// When a call's launches are submitted to the device ([`SUBMIT_ENV`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Submit {
    /// Flush every queue after the call's launches, waiting for each device thread.
    Eager,
    /// As eager, but the caller does not wait for Fusion's thread (the default).
    Background,
    /// Leave the launches in the queues until the caller's next sync or read.
    Lazy,
}

impl Submit {
    /// The values [`SUBMIT_ENV`] takes.
    const NAMES: &'static str = "background, eager, lazy";

    /// The submission [`SUBMIT_ENV`] asks for.
    ///
    /// # Errors
    /// [`DilatedAttentionError::InvalidEnvironment`] for an unknown value.
    #[cfg_attr(not(any(feature = "cubecl", feature = "fusion")), allow(dead_code))]
    pub(crate) fn from_env() -> Result<Self> {
        Self::from_setting(std::env::var(SUBMIT_ENV).ok())
    }

    /// The submission a value of [`SUBMIT_ENV`] asks for (`None`: unset).
    fn from_setting(setting: Option<String>) -> Result<Self> {
        let Some(value) = setting else {
            return Ok(Self::Background);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "background" => Ok(Self::Background),
            "eager" => Ok(Self::Eager),
            "lazy" => Ok(Self::Lazy),
            _ => Err(invalid(SUBMIT_ENV, value, Self::NAMES)),
        }
    }
}

fn invalid(variable: &'static str, value: String, expected: &'static str) -> DilatedAttentionError {
    DilatedAttentionError::InvalidEnvironment {
        variable,
        value,
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submit_variable_picks_the_submission_and_rejects_others() {
        let setting = |value: &str| Submit::from_setting(Some(value.to_string()));
        assert_eq!(Submit::from_setting(None), Ok(Submit::Background));
        assert_eq!(setting("eager"), Ok(Submit::Eager));
        assert_eq!(setting(" EAGER"), Ok(Submit::Eager));
        assert_eq!(setting(" Lazy\n"), Ok(Submit::Lazy));
        assert_eq!(setting("BACKGROUND"), Ok(Submit::Background));
        for bad in ["", "sometimes", "eager,lazy"] {
            let error = setting(bad).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "environment variable DILATED_ATTENTION_SUBMIT is {bad:?}; expected one of: \
                     background, eager, lazy"
                )
            );
        }
    }
}
