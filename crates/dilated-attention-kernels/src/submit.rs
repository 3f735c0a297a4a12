//! When a call's launches are submitted to the device: at once (eager, the default), at once
//! without the caller waiting on Fusion's thread (background), or at Burn's next flush (lazy).
//!
//! CubeCL 0.10 hands every launch to a device thread through a queue that the thread only picks
//! up once 32 tasks wait or a blocking call (a sync, a read) flushes it; `Fusion` adds a second
//! such queue in front of it. A call of ours queues one to four launches, so left alone its
//! kernels start at the caller's next sync, after everything the host does until then (an
//! autodiff backward's bookkeeping, the next layer's ops): the device idles meanwhile. Eager
//! submission flushes those queues once the call's launches are queued, so the device starts on
//! them while the host goes on. It costs the caller one blocking round trip to each device
//! thread.
//!
//! Measured on an H100 (`docs/results/submit-h100-session13.md`, bf16, 8 heads x 64): a
//! synced head-grouped forward at 8K tokens took 0.22-0.25 ms eager and 0.49-0.50 ms lazy; from
//! 32K tokens back-to-back calls run at the device's pace either way. Eager costs the most on
//! small calls issued back to back without syncs (forward+backward at 8K: 0.80 ms a call
//! against 0.69 lazy; at 64 tokens several times as long): there, [`SUBMIT_ENV`]` = lazy`
//! leaves the queues alone, and `background` keeps the caller from waiting on Fusion's thread
//! (see [`Submit::Background`]).
//!
//! ```
//! assert_eq!(dilated_attention_kernels::SUBMIT_ENV, "DILATED_ATTENTION_SUBMIT");
//! ```

/// Environment variable that picks when a call's launches are submitted (read at every call,
/// case-insensitive): `lazy` leaves them in Burn's queues until their next flush; `background`
/// flushes Fusion's queue without waiting for its thread (Fusion's thread then runs our
/// operation and flushes CubeCL's queue; on a bare `CubeBackend` it is the same as eager);
/// `eager`, any other value or none flushes both queues, waiting for each thread.
pub const SUBMIT_ENV: &str = "DILATED_ATTENTION_SUBMIT";

/// When a call's launches are submitted to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Submit {
    /// Flush every queue after the call's launches, waiting for each device thread.
    Eager,
    /// As eager, but the caller does not wait for Fusion's thread: it only flushes Fusion's queue,
    /// and that thread flushes CubeCL's after running our operation. On lavapipe our kernels ran
    /// before the caller's sync with the call returning at once; not yet timed on a GPU.
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
            Some("background") => Self::Background,
            _ => Self::Eager,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_picks_the_submission() {
        assert_eq!(Submit::from_setting(None), Submit::Eager);
        assert_eq!(Submit::from_setting(Some("eager")), Submit::Eager);
        assert_eq!(Submit::from_setting(Some("")), Submit::Eager);
        assert_eq!(Submit::from_setting(Some("lazy")), Submit::Lazy);
        assert_eq!(Submit::from_setting(Some(" Lazy\n")), Submit::Lazy);
        assert_eq!(Submit::from_setting(Some("background")), Submit::Background);
        assert_eq!(Submit::from_setting(Some("BACKGROUND")), Submit::Background);
    }
}
