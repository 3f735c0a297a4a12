//! Comparisons for tests (feature `test-oracle`) that cannot pass on NaN or on a misplaced
//! infinity: `f32::max(0.0, NaN)` is `0.0`, so an error folded with `max` hides NaN; these
//! functions return `f64::INFINITY` instead, which fails every bound.
//!
//! ```
//! use dilated_attention_core::compare::{
//!     check_close, lse_error, max_scaled_error, relative_l2_error,
//! };
//!
//! let want = [1.0, -2.0, 0.5];
//! assert!(max_scaled_error(&[1.0, -2.0, 0.5], &want) == 0.0);
//! assert!(max_scaled_error(&[1.0, f32::NAN, 0.5], &want).is_infinite());
//! assert!(relative_l2_error(&[1.0, -2.0, f32::NAN], &want).is_infinite());
//! // An LSE compares its -inf pattern exactly, then the finite entries.
//! let lse = [f32::NEG_INFINITY, 0.25];
//! assert_eq!(lse_error(&lse, &lse), 0.0);
//! assert!(lse_error(&[-1.0e4, 0.25], &lse).is_infinite());
//! // Element by element, with burn's relative and absolute tolerances, strictly.
//! assert!(check_close(&[1.0, f32::NAN], &[1.0, f32::NAN], 1e-5, 1e-5).is_err());
//! ```

/// Largest `|got - want| / (1 + |want|)` over the elements. Equal infinities count as equal;
/// a NaN on either side, or an infinity that the other side does not have, gives `+inf`.
///
/// # Panics
/// If the lengths differ.
pub fn max_scaled_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "element counts differ");
    let mut worst = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let error = if g == w {
            0.0
        } else if !g.is_finite() || !w.is_finite() {
            // NaN on either side, or an infinity the other side does not have.
            f64::INFINITY
        } else {
            let (g, w) = (f64::from(g), f64::from(w));
            (g - w).abs() / (1.0 + w.abs())
        };
        worst = worst.max(error);
    }
    worst
}

/// Checks every element: `|got - want| <= abs + rel |want|`, equal values (infinities
/// included) always pass, and any other NaN or infinity on either side fails. The message names
/// the first offending positions and their values.
///
/// # Errors
/// The message, when an element fails.
///
/// # Panics
/// If the lengths differ.
pub fn check_close(got: &[f32], want: &[f32], rel: f64, abs: f64) -> Result<(), String> {
    assert_eq!(got.len(), want.len(), "element counts differ");
    let mut failures = Vec::new();
    let mut count = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let fine = g == w || {
            let (g, w) = (f64::from(g), f64::from(w));
            g.is_finite() && w.is_finite() && (g - w).abs() <= abs + rel * w.abs()
        };
        if !fine {
            count += 1;
            if failures.len() < 5 {
                failures.push(format!("[{i}]: got {g}, want {w}"));
            }
        }
    }
    if count == 0 {
        return Ok(());
    }
    Err(format!(
        "{count} of {} elements outside rel {rel:.1e} + abs {abs:.1e} (NaN and misplaced infinities fail): {}",
        got.len(),
        failures.join(", ")
    ))
}

/// [`check_close`] for a log-sum-exp: `got` must be `-inf` exactly where `want` is (a query
/// that sees no key) and finite elsewhere, and the finite entries within the tolerance.
///
/// # Errors
/// The message, when the pattern differs or an entry fails.
///
/// # Panics
/// If the lengths differ.
pub fn check_lse_close(got: &[f32], want: &[f32], rel: f64, abs: f64) -> Result<(), String> {
    let (got, want) = finite_lse_entries(got, want).ok_or(
        "the LSE's -inf pattern (rows that see no key) differs, or a value is NaN or +inf",
    )?;
    check_close(&got, &want, rel, abs)
}

/// `||got - want|| / ||want||` in `f64` (`||want||` at least `1e-30`); `+inf` when any value on
/// either side is not finite.
///
/// # Panics
/// If the lengths differ.
pub fn relative_l2_error(got: &[f32], want: &[f32]) -> f64 {
    let (error, norm) = l2_parts(got, want);
    error / norm.max(1e-30)
}

/// `||got - want|| / max(||want||, sqrt(len))`: [`relative_l2_error`] counting every reference
/// value as at least 1 in size (for values near 0 with an absolute error, such as an LSE).
///
/// # Panics
/// If the lengths differ.
pub fn floored_l2_error(got: &[f32], want: &[f32]) -> f64 {
    let (error, norm) = l2_parts(got, want);
    error / norm.max((want.len() as f64).sqrt())
}

/// The error of a log-sum-exp: `+inf` unless `got` is `-inf` exactly where `want` is (a query
/// that sees no key) and finite everywhere else; otherwise [`max_scaled_error`] over the finite
/// entries.
///
/// # Panics
/// If the lengths differ.
pub fn lse_error(got: &[f32], want: &[f32]) -> f64 {
    let (got, want) = match finite_lse_entries(got, want) {
        Some(pair) => pair,
        None => return f64::INFINITY,
    };
    max_scaled_error(&got, &want)
}

/// As [`lse_error`] with [`floored_l2_error`] over the finite entries (for half precision and
/// TF32, whose LSE errors are absolute).
///
/// # Panics
/// If the lengths differ.
pub fn lse_l2_error(got: &[f32], want: &[f32]) -> f64 {
    match finite_lse_entries(got, want) {
        Some((got, want)) if !want.is_empty() => floored_l2_error(&got, &want),
        Some(_) => 0.0,
        None => f64::INFINITY,
    }
}

/// As [`lse_error`] with [`relative_l2_error`] over the finite entries.
///
/// # Panics
/// If the lengths differ.
pub fn lse_relative_l2_error(got: &[f32], want: &[f32]) -> f64 {
    match finite_lse_entries(got, want) {
        Some((got, want)) if !want.is_empty() => relative_l2_error(&got, &want),
        Some(_) => 0.0,
        None => f64::INFINITY,
    }
}

/// The entries where `want` is finite, when `got` has the same `-inf` pattern and no other
/// non-finite value.
fn finite_lse_entries(got: &[f32], want: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
    assert_eq!(got.len(), want.len(), "element counts differ");
    let mut kept = (Vec::with_capacity(got.len()), Vec::with_capacity(got.len()));
    for (&g, &w) in got.iter().zip(want) {
        if w == f32::NEG_INFINITY {
            if g != f32::NEG_INFINITY {
                return None;
            }
        } else if !g.is_finite() || !w.is_finite() {
            return None;
        } else {
            kept.0.push(g);
            kept.1.push(w);
        }
    }
    Some(kept)
}

/// `(||got - want||, ||want||)` in `f64`; `(+inf, 1)` when a value is not finite.
fn l2_parts(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "element counts differ");
    if got.iter().chain(want).any(|x| !x.is_finite()) {
        return (f64::INFINITY, 1.0);
    }
    let error = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = want
        .iter()
        .map(|&w| f64::from(w).powi(2))
        .sum::<f64>()
        .sqrt();
    (error, norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_fails_on_nan_and_on_a_lone_infinity() {
        let want = [0.5f32, -1.0, 2.0];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let got = [0.5, bad, 2.0];
            assert!(max_scaled_error(&got, &want).is_infinite(), "{bad}");
            assert!(relative_l2_error(&got, &want).is_infinite(), "{bad}");
            assert!(floored_l2_error(&got, &want).is_infinite(), "{bad}");
            assert!(lse_error(&got, &want).is_infinite(), "{bad}");
            // A NaN in the reference fails too.
            assert!(max_scaled_error(&want, &got).is_infinite(), "{bad}");
        }
    }

    #[test]
    fn errors_measure_what_they_say() {
        let want = [3.0f32, 4.0];
        assert!((max_scaled_error(&[3.5, 4.0], &want) - 0.5 / 4.0).abs() < 1e-12);
        assert!((relative_l2_error(&[3.0, 4.5], &want) - 0.1).abs() < 1e-7);
        assert!((floored_l2_error(&[0.0, 0.0], &[0.0, 0.0])).abs() < 1e-12);
    }

    #[test]
    fn check_close_passes_equal_infinities_and_fails_the_rest() {
        let inf = f32::INFINITY;
        assert!(check_close(&[1.0, -inf], &[1.0 + 1e-7, -inf], 1e-5, 0.0).is_ok());
        assert!(check_close(&[1.0, f32::NAN], &[1.0, f32::NAN], 1e-5, 1e-5).is_err());
        assert!(check_close(&[1.0, inf], &[1.0, 2.0], 1e-5, 1e-5).is_err());
        let message = check_close(&[1.1, 2.0], &[1.0, 2.0], 1e-5, 1e-5).unwrap_err();
        assert!(message.starts_with("1 of 2 elements"), "{message}");
        let lse = [f32::NEG_INFINITY, 0.5];
        assert!(check_lse_close(&lse, &lse, 0.0, 0.0).is_ok());
        assert!(check_lse_close(&[-1.0e4, 0.5], &lse, 1.0, 1.0).is_err());
    }

    #[test]
    fn lse_compares_the_pattern_of_empty_rows_exactly() {
        let inf = f32::NEG_INFINITY;
        let want = [inf, 1.0, inf, -3.0];
        assert_eq!(lse_error(&want, &want), 0.0);
        // A row that should see no key but got a finite LSE, and the reverse.
        assert!(lse_error(&[-1.0e4, 1.0, inf, -3.0], &want).is_infinite());
        assert!(lse_error(&[inf, inf, inf, -3.0], &want).is_infinite());
        let near = [inf, 1.001, inf, -3.0];
        assert!((lse_error(&near, &want) - 0.001 / 2.0).abs() < 1e-6);
        assert!(lse_l2_error(&near, &want) > 0.0 && lse_l2_error(&near, &want) < 1e-3);
    }
}
