//! When a call's launches are submitted to the device: at once without the caller waiting
//! (background, the default), at once with the caller waiting for Burn's device threads (eager),
//! or at Burn's next flush (lazy).
//!
//! CubeCL 0.10 hands every launch to a device thread through a queue that the thread only picks
//! up once 32 tasks wait or a blocking call (a sync, a read) flushes it; `Fusion` adds a second
//! such queue in front of it. A call of ours queues one to four launches, so left alone its
//! kernels start at the caller's next sync, after everything the host does until then (an
//! autodiff backward's bookkeeping, the next layer's ops): the device idles meanwhile.
//! Background submission flushes Fusion's queue without waiting: Fusion's thread runs our
//! operation and flushes CubeCL's queue, so the device starts on the call while the caller goes
//! on, as a CUDA launch in PyTorch does. On a bare `CubeBackend` there is no Fusion thread, and
//! background is eager: the caller flushes CubeCL's queue and waits for its device thread.
//!
//! Measured on an H100 (`docs/results/submit-h100-session14.md`, bf16, 8 heads x 64, 3 rounds):
//! under `Fusion` a forward call returned in 0.01-0.02 ms background against 0.09-0.25 ms eager;
//! a synced head-grouped forward at 8K took 0.22-0.27 ms background, 0.21-0.25 eager and
//! 0.29-0.50 lazy (`fused_bench`'s rounds: 0.24-0.41 background, 0.22-0.24 eager);
//! back-to-back forward+backward at 8K took 0.77-0.86 ms a call background, 0.84-1.06 eager and
//! 0.70 lazy. Lazy still wins for many small calls issued back to back without syncs:
//! [`SUBMIT_ENV`]` = lazy` leaves the queues alone.
//!
//! ```
//! assert_eq!(dilated_attention_kernels::SUBMIT_ENV, "DILATED_ATTENTION_SUBMIT");
//! ```

/// Environment variable that picks when a call's launches are submitted (read at every call,
/// case-insensitive): `lazy` leaves them in Burn's queues until their next flush; `eager`
/// flushes both queues, waiting for each thread; `background`, any other value or none flushes
/// Fusion's queue without waiting for its thread (Fusion's thread then runs our operation and
/// flushes CubeCL's queue; on a bare `CubeBackend` it is the same as eager).
pub const SUBMIT_ENV: &str = "DILATED_ATTENTION_SUBMIT";

/// When a call's launches are submitted to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Submit {
    /// Flush every queue after the call's launches, waiting for each device thread.
    Eager,
    /// As eager, but the caller does not wait for Fusion's thread: it only flushes Fusion's queue,
    /// and that thread flushes CubeCL's after running our operation (the default).
    Background,
    /// Leave the launches in the queues until the caller's next sync or read.
    Lazy,
}

impl Submit {
    /// The submission [`SUBMIT_ENV`] asks for.
    pub(crate) fn from_env() -> Self {
        Self::from_setting(std::env::var(SUBMIT_ENV).ok().as_deref())
    }

    /// The submission a value of [`SUBMIT_ENV`] asks for (`None`: unset).
    fn from_setting(setting: Option<&str>) -> Self {
        match setting
            .map(|value| value.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("lazy") => Self::Lazy,
            Some("eager") => Self::Eager,
            _ => Self::Background,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_picks_the_submission() {
        assert_eq!(Submit::from_setting(None), Submit::Background);
        assert_eq!(Submit::from_setting(Some("eager")), Submit::Eager);
        assert_eq!(Submit::from_setting(Some(" EAGER")), Submit::Eager);
        assert_eq!(Submit::from_setting(Some("")), Submit::Background);
        assert_eq!(Submit::from_setting(Some("sometimes")), Submit::Background);
        assert_eq!(Submit::from_setting(Some("lazy")), Submit::Lazy);
        assert_eq!(Submit::from_setting(Some(" Lazy\n")), Submit::Lazy);
        assert_eq!(Submit::from_setting(Some("background")), Submit::Background);
        assert_eq!(Submit::from_setting(Some("BACKGROUND")), Submit::Background);
    }
}
