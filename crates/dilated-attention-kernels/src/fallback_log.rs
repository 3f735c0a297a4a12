//! The warning a call gives when `KernelStrategy::Auto` sends it to the reference path on a
//! backend that has kernels (head dim above the kernels', grids too large, dropout while
//! training): one `log::warn!` per reason and process, so a training loop warns once. Ask
//! [`kernel_choice`](crate::kernel_choice) to know the path of a call beforehand.

use std::collections::BTreeSet;
use std::sync::Mutex;

static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Warns, the first time this `reason` is seen in the process, that a call runs on the
/// reference path. Returns whether it warned.
pub(crate) fn warn_reference_fallback(reason: &str) -> bool {
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = warned.insert(reason.to_owned());
    if first {
        log::warn!(
            "dilated attention: this call runs on the reference path (plain tensor ops, \
             slower, more memory) because {reason}; later calls for the same reason do too, \
             without this warning"
        );
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_reason() {
        assert!(warn_reference_fallback("test reason a"));
        assert!(!warn_reference_fallback("test reason a"));
        assert!(warn_reference_fallback("test reason b"));
    }
}
