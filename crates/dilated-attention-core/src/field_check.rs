//! Checks of single config values, shared by every config of the library so that each bad value
//! gives the same error wherever it appears.
//!
//! ```
//! use dilated_attention_core::{ensure_positive, ensure_probability, DilatedAttentionError};
//!
//! assert!(ensure_positive("gamma_init", 1.0).is_ok());
//! assert_eq!(
//!     ensure_probability("dropout", 1.0),
//!     Err(DilatedAttentionError::InvalidProbability { field: "dropout", value: 1.0 })
//! );
//! ```

use crate::{DilatedAttentionError, Result};

/// `value >= 1`, else [`DilatedAttentionError::ZeroSize`].
pub fn ensure_nonzero(field: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(DilatedAttentionError::ZeroSize { field });
    }
    Ok(())
}

/// `value` finite and `> 0`, else [`DilatedAttentionError::InvalidPositive`].
pub fn ensure_positive(field: &'static str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(DilatedAttentionError::InvalidPositive { field, value });
    }
    Ok(())
}

/// `value` in `[0, 1)`, else [`DilatedAttentionError::InvalidProbability`].
pub fn ensure_probability(field: &'static str, value: f64) -> Result<()> {
    if !(0.0..1.0).contains(&value) {
        return Err(DilatedAttentionError::InvalidProbability { field, value });
    }
    Ok(())
}

/// `value` in `(0, 1]`, else [`DilatedAttentionError::InvalidRatio`].
pub fn ensure_ratio(field: &'static str, value: f64) -> Result<()> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(DilatedAttentionError::InvalidRatio { field, value });
    }
    Ok(())
}
