//! A generalised Hilbert curve over any `width x height` rectangle (not only powers of two):
//! the order in which it visits the cells.
//!
//! The rectangle is cut recursively along its longer side, as in Hilbert's construction, with
//! the split points moved by one cell where needed to keep each part's walk able to start and
//! end at the right corners (the "generalised Hilbert" or gilbert construction, J. Červený 2019).
//! Consecutive cells are grid neighbours (one step along x or y), except that a rectangle whose
//! longer side is odd and whose shorter side is even and larger than 2 (e.g. 4 x 5) has exactly
//! one diagonal step: the curve runs between the two ends of the longer side, which then have the
//! same checkerboard colour while the cell count is even, so no walk of neighbour steps between
//! them exists. The tests check exactly that: every rectangle up to 40 x 40, and random ones up to
//! 300 x 300.
//!
//! ```
//! use dilated_attention_hilbert::hilbert_2d;
//!
//! let order = hilbert_2d(4, 4);
//! assert_eq!(order.len(), 16);
//! assert_eq!(order[0], (0, 0));
//! // every cell once
//! let mut seen = order.clone();
//! seen.sort();
//! seen.dedup();
//! assert_eq!(seen.len(), 16);
//! ```

/// The cells `(x, y)` of a `width x height` grid (`x < width`, `y < height`) in generalised
/// Hilbert order, starting at `(0, 0)`. Empty when either side is 0.
pub fn hilbert_2d(width: usize, height: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(width * height);
    if width == 0 || height == 0 {
        return out;
    }
    let (w, h) = (width as i64, height as i64);
    if w >= h {
        walk(&mut out, (0, 0), (w, 0), (0, h));
    } else {
        walk(&mut out, (0, 0), (0, h), (w, 0));
    }
    out
}

/// Walks the rectangle at `origin` spanned by the major axis `a` and the minor axis `b` (each a
/// vector along x or y, possibly negative), appending its cells.
fn walk(out: &mut Vec<(usize, usize)>, origin: (i64, i64), a: (i64, i64), b: (i64, i64)) {
    let (x, y) = origin;
    let len_a = (a.0 + a.1).abs();
    let len_b = (b.0 + b.1).abs();
    let da = (a.0.signum(), a.1.signum());
    let db = (b.0.signum(), b.1.signum());
    if len_b == 1 {
        // a single row along a
        for i in 0..len_a {
            out.push(((x + i * da.0) as usize, (y + i * da.1) as usize));
        }
        return;
    }
    if len_a == 1 {
        // a single column along b
        for i in 0..len_b {
            out.push(((x + i * db.0) as usize, (y + i * db.1) as usize));
        }
        return;
    }
    let mut half_a = (a.0 / 2, a.1 / 2);
    let mut half_b = (b.0 / 2, b.1 / 2);
    let len_half_a = (half_a.0 + half_a.1).abs();
    let len_half_b = (half_b.0 + half_b.1).abs();
    if 2 * len_a > 3 * len_b {
        // long and thin: two halves along a, each walked with the same orientation
        if len_half_a % 2 == 1 && len_a > 2 {
            half_a = (half_a.0 + da.0, half_a.1 + da.1);
        }
        walk(out, (x, y), half_a, b);
        walk(
            out,
            (x + half_a.0, y + half_a.1),
            (a.0 - half_a.0, a.1 - half_a.1),
            b,
        );
    } else {
        // Hilbert's step: up the first half of b, along a, and back down
        if len_half_b % 2 == 1 && len_b > 2 {
            half_b = (half_b.0 + db.0, half_b.1 + db.1);
        }
        walk(out, (x, y), half_b, half_a);
        walk(
            out,
            (x + half_b.0, y + half_b.1),
            a,
            (b.0 - half_b.0, b.1 - half_b.1),
        );
        walk(
            out,
            (
                x + (a.0 - da.0) + (half_b.0 - db.0),
                y + (a.1 - da.1) + (half_b.1 - db.1),
            ),
            (-half_b.0, -half_b.1),
            (-(a.0 - half_a.0), -(a.1 - half_a.1)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn steps(order: &[(usize, usize)]) -> (usize, usize) {
        let mut diagonal = 0;
        let mut jumps = 0;
        for w in order.windows(2) {
            let dx = w[0].0.abs_diff(w[1].0);
            let dy = w[0].1.abs_diff(w[1].1);
            match (dx, dy) {
                (1, 0) | (0, 1) => {}
                (1, 1) => diagonal += 1,
                _ => jumps += 1,
            }
        }
        (diagonal, jumps)
    }

    #[test]
    fn powers_of_two_match_hilbert_locality() {
        for k in 0..6 {
            let n = 1 << k;
            let order = hilbert_2d(n, n);
            assert_eq!(steps(&order), (0, 0), "{n}x{n}");
            // each aligned quarter is one contiguous run of the curve
            if n >= 2 {
                let quarter = n * n / 4;
                for q in 0..4 {
                    let cells = &order[q * quarter..(q + 1) * quarter];
                    let (x0, y0) = cells[0];
                    let (qx, qy) = (x0 / (n / 2), y0 / (n / 2));
                    assert!(
                        cells
                            .iter()
                            .all(|&(x, y)| x / (n / 2) == qx && y / (n / 2) == qy)
                    );
                }
            }
        }
    }

    fn check(width: usize, height: usize) -> Result<(), TestCaseError> {
        {
            let order = hilbert_2d(width, height);
            let mut seen = order.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), width * height);
            prop_assert!(order.iter().all(|&(x, y)| x < width && y < height));
            prop_assert_eq!(order[0], (0, 0));
            let (diagonal, jumps) = steps(&order);
            prop_assert_eq!(jumps, 0, "{}x{}", width, height);
            let (long, short) = (width.max(height), width.min(height));
            let forced = usize::from(long % 2 == 1 && short % 2 == 0 && short > 2);
            prop_assert_eq!(
                diagonal,
                forced,
                "{}x{}: {} diagonal steps",
                width,
                height,
                diagonal
            );
        }
        Ok(())
    }

    #[test]
    fn every_small_rectangle_is_covered_once_by_neighbour_steps() {
        for width in 1..=40 {
            for height in 1..=40 {
                check(width, height).unwrap();
            }
        }
    }

    proptest! {
        #[test]
        fn large_rectangles_are_covered_once_by_neighbour_steps(width in 1usize..=300, height in 1usize..=300) {
            check(width, height)?;
        }
    }
}
