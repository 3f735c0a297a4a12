//! When a call's kernels reach the device: at once (eager, the default) or when Burn's queues
//! next flush (lazy).
//!
//! CubeCL 0.10 hands every launch to a device thread through a queue that the thread only picks
//! up once 32 tasks wait or a blocking call (a sync, a read) flushes it; `Fusion` adds a second
//! such queue in front of it. A call of ours queues one to four launches, so left alone its
//! kernels start at the caller's next sync, after everything the host does until then (an
//! autodiff backward's bookkeeping, the next layer's ops): the device idles meanwhile. Eager
//! dispatch flushes those queues once the call's launches are queued, so the device starts on
//! them while the host goes on. It costs the caller one round trip to each device thread.
//!
//! Measured on an H100 (`docs/results/dispatch-h100-session13.md`, bf16, 8 heads x 64): a
//! synced head-grouped forward at 8K tokens took 0.22-0.25 ms eager and 0.49-0.50 ms lazy; from
//! 32K tokens back-to-back calls run at the device's pace either way. Eager costs the most on
//! small calls issued back to back without syncs (forward+backward at 8K: 0.80 ms a call
//! against 0.69 lazy; at 64 tokens several times as long): there, [`DISPATCH_ENV`]` = lazy`
//! leaves the queues alone. `background` keeps the caller from waiting on Fusion's thread (see
//! [`Dispatch::Background`]).
//!
//! ```
//! assert_eq!(dilated_attention_kernels::DISPATCH_ENV, "DILATED_ATTENTION_DISPATCH");
//! ```

/// Environment variable that picks the dispatch (read at every call): `lazy` leaves the launches
/// in Burn's queues until their next flush; `background` flushes Fusion's queue without waiting
/// for it (Fusion's thread then runs our operation and hands its launches to the device); anything
/// else (or unset) is eager.
pub const DISPATCH_ENV: &str = "DILATED_ATTENTION_DISPATCH";

/// How a call hands its launches to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// Flush every queue after the call's launches, waiting for each device thread.
    Eager,
    /// As eager, but the caller does not wait for Fusion's thread: it only flushes Fusion's queue,
    /// and that thread flushes CubeCL's after running our operation. On lavapipe our kernels ran
    /// before the caller's sync with the call returning at once; not yet timed on a GPU.
    Background,
    /// Leave the launches in the queues until the caller's next sync or read.
    Lazy,
}

/// The dispatch in force.
pub(crate) fn dispatch() -> Dispatch {
    dispatch_for(std::env::var(DISPATCH_ENV).ok().as_deref())
}

/// The dispatch [`DISPATCH_ENV`]'s value asks for.
fn dispatch_for(setting: Option<&str>) -> Dispatch {
    match setting.map(str::trim) {
        Some("lazy") => Dispatch::Lazy,
        Some("background") => Dispatch::Background,
        _ => Dispatch::Eager,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_picks_the_dispatch() {
        assert_eq!(dispatch_for(None), Dispatch::Eager);
        assert_eq!(dispatch_for(Some("eager")), Dispatch::Eager);
        assert_eq!(dispatch_for(Some("")), Dispatch::Eager);
        assert_eq!(dispatch_for(Some("lazy")), Dispatch::Lazy);
        assert_eq!(dispatch_for(Some(" lazy\n")), Dispatch::Lazy);
        assert_eq!(dispatch_for(Some("background")), Dispatch::Background);
    }
}
