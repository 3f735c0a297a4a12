//! A generalised Hilbert curve over any `width x height x depth` box (not only powers of two):
//! the order in which it visits the cells.
//!
//! The 3-D counterpart of [`hilbert_2d`](crate::hilbert_2d) (the "gilbert3d" construction,
//! J. Červený 2019). A box is walked along three axes `a` (the longest, the curve runs from one
//! end of it to the other), `b` and `c`. A box that is long along `a` is cut in two along `a`; one
//! that is flat (its `c` side short) is cut into three as the 2-D curve cuts a rectangle, in the
//! `a`-`b` plane; likewise in the `a`-`c` plane when `b` is short; otherwise it is cut into five
//! parts, which is Hilbert's 3-D step (eight octants, walked two at a time where they line up).
//! Split points move by one cell where needed to keep every part's walk able to start and end at
//! the right corners.
//!
//! What the tests check: every box up to 10 x 10 x 10 and random boxes up to 40 on a side are
//! covered once, every step moves at most one cell along each axis, every step of a box whose
//! sides are all even moves exactly one cell along one axis, and on a `2^k` cube every aligned
//! octant is one run of the curve. Boxes with odd sides can have a few diagonal steps (at most
//! one cell along each axis), as in 2-D.
//!
//! ```
//! use dilated_attention_hilbert::hilbert_3d;
//!
//! let order = hilbert_3d(4, 4, 4);
//! assert_eq!(order.len(), 64);
//! assert_eq!(order[0], (0, 0, 0));
//! // each run of 8 cells is a 2 x 2 x 2 block
//! for block in order.chunks(8) {
//!     let span = |f: fn(&(usize, usize, usize)) -> usize| {
//!         block.iter().map(f).max().unwrap() - block.iter().map(f).min().unwrap()
//!     };
//!     assert!(span(|p| p.0) <= 1 && span(|p| p.1) <= 1 && span(|p| p.2) <= 1);
//! }
//! ```

/// A vector along the grid's axes (one of them non-zero in every use here).
type Axis = (i64, i64, i64);

/// The cells `(x, y, z)` of a `width x height x depth` box in generalised Hilbert order,
/// starting at `(0, 0, 0)`. Empty when any side is 0.
pub fn hilbert_3d(width: usize, height: usize, depth: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::with_capacity(width * height * depth);
    if width == 0 || height == 0 || depth == 0 {
        return out;
    }
    let (w, h, d) = (width as i64, height as i64, depth as i64);
    let origin = (0, 0, 0);
    if w >= h && w >= d {
        walk(&mut out, origin, (w, 0, 0), (0, h, 0), (0, 0, d));
    } else if h >= w && h >= d {
        walk(&mut out, origin, (0, h, 0), (w, 0, 0), (0, 0, d));
    } else {
        walk(&mut out, origin, (0, 0, d), (w, 0, 0), (0, h, 0));
    }
    out
}

fn length(v: Axis) -> i64 {
    (v.0 + v.1 + v.2).abs()
}

fn unit(v: Axis) -> Axis {
    (v.0.signum(), v.1.signum(), v.2.signum())
}

fn add(p: Axis, q: Axis) -> Axis {
    (p.0 + q.0, p.1 + q.1, p.2 + q.2)
}

fn sub(p: Axis, q: Axis) -> Axis {
    (p.0 - q.0, p.1 - q.1, p.2 - q.2)
}

fn neg(p: Axis) -> Axis {
    (-p.0, -p.1, -p.2)
}

fn half(v: Axis) -> Axis {
    (v.0 / 2, v.1 / 2, v.2 / 2)
}

/// Half of `v`, made even (one cell longer) when it is odd and `v` is longer than 2, so that
/// the parts on either side of the cut can start and end at the right corners.
fn even_half(v: Axis) -> Axis {
    let h = half(v);
    if length(h) % 2 == 1 && length(v) > 2 {
        add(h, unit(v))
    } else {
        h
    }
}

/// Walks the box at `origin` spanned by `a` (the curve runs from its start to its end), `b`
/// and `c`, appending its cells.
fn walk(out: &mut Vec<(usize, usize, usize)>, origin: Axis, a: Axis, b: Axis, c: Axis) {
    let (len_a, len_b, len_c) = (length(a), length(b), length(c));
    let (da, db, dc) = (unit(a), unit(b), unit(c));
    let line = |out: &mut Vec<(usize, usize, usize)>, step: Axis, count: i64| {
        for i in 0..count {
            let p = add(origin, (step.0 * i, step.1 * i, step.2 * i));
            out.push((p.0 as usize, p.1 as usize, p.2 as usize));
        }
    };
    if len_b == 1 && len_c == 1 {
        return line(out, da, len_a);
    }
    if len_a == 1 && len_c == 1 {
        return line(out, db, len_b);
    }
    if len_a == 1 && len_b == 1 {
        return line(out, dc, len_c);
    }
    let (a2, b2, c2) = (even_half(a), even_half(b), even_half(c));
    if 2 * len_a > 3 * len_b && 2 * len_a > 3 * len_c {
        // long along a: two halves, same orientation
        walk(out, origin, a2, b, c);
        walk(out, add(origin, a2), sub(a, a2), b, c);
    } else if 3 * len_b > 4 * len_c {
        // flat in c: the 2-D step in the a-b plane
        walk(out, origin, b2, c, a2);
        walk(out, add(origin, b2), a, sub(b, b2), c);
        walk(
            out,
            add(origin, add(sub(a, da), sub(b2, db))),
            neg(b2),
            c,
            neg(sub(a, a2)),
        );
    } else if 3 * len_c > 4 * len_b {
        // flat in b: the 2-D step in the a-c plane
        walk(out, origin, c2, a2, b);
        walk(out, add(origin, c2), a, b, sub(c, c2));
        walk(
            out,
            add(origin, add(sub(a, da), sub(c2, dc))),
            neg(c2),
            neg(sub(a, a2)),
            b,
        );
    } else {
        // Hilbert's 3-D step: five parts
        walk(out, origin, b2, c2, a2);
        walk(out, add(origin, b2), c, a2, sub(b, b2));
        walk(
            out,
            add(origin, add(sub(b2, db), sub(c, dc))),
            a,
            neg(b2),
            neg(sub(c, c2)),
        );
        walk(
            out,
            add(origin, add(add(sub(a, da), b2), sub(c, dc))),
            neg(c),
            neg(sub(a, a2)),
            sub(b, b2),
        );
        walk(
            out,
            add(origin, add(sub(a, da), sub(b2, db))),
            neg(b2),
            c2,
            neg(sub(a, a2)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Cell = (usize, usize, usize);

    /// (steps of more than one cell along some axis, steps that are not a single unit move)
    fn steps(order: &[Cell]) -> (usize, usize) {
        let mut far = 0;
        let mut not_unit = 0;
        for w in order.windows(2) {
            let d = [
                w[0].0.abs_diff(w[1].0),
                w[0].1.abs_diff(w[1].1),
                w[0].2.abs_diff(w[1].2),
            ];
            if d.iter().any(|&v| v > 1) {
                far += 1;
            }
            if d.iter().sum::<usize>() != 1 {
                not_unit += 1;
            }
        }
        (far, not_unit)
    }

    fn check(w: usize, h: usize, d: usize) -> Result<(), TestCaseError> {
        let order = hilbert_3d(w, h, d);
        prop_assert_eq!(order.len(), w * h * d);
        prop_assert!(order.iter().all(|&(x, y, z)| x < w && y < h && z < d));
        let mut seen = order.clone();
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(seen.len(), w * h * d, "{}x{}x{} repeats a cell", w, h, d);
        prop_assert_eq!(order[0], (0, 0, 0));
        let (far, not_unit) = steps(&order);
        prop_assert_eq!(far, 0, "{}x{}x{}: {} jumps", w, h, d, far);
        if [w, h, d].iter().all(|s| s.is_multiple_of(2)) {
            prop_assert_eq!(
                not_unit,
                0,
                "{}x{}x{}: {} diagonal steps",
                w,
                h,
                d,
                not_unit
            );
        }
        Ok(())
    }

    #[test]
    fn every_small_box_is_covered_once_by_neighbour_steps() {
        for w in 1..=10 {
            for h in 1..=10 {
                for d in 1..=10 {
                    check(w, h, d).unwrap();
                }
            }
        }
    }

    #[test]
    fn octants_of_power_of_two_cubes_are_runs_of_the_curve() {
        for k in 1..5 {
            let n = 1usize << k;
            let order = hilbert_3d(n, n, n);
            assert_eq!(steps(&order), (0, 0), "{n}^3");
            let octant = n * n * n / 8;
            for run in order.chunks(octant) {
                let corner = |p: &Cell| (p.0 / (n / 2), p.1 / (n / 2), p.2 / (n / 2));
                let first = corner(&run[0]);
                assert!(run.iter().all(|p| corner(p) == first), "{n}^3");
            }
        }
    }

    #[test]
    fn empty_sides_give_no_cells() {
        assert!(hilbert_3d(0, 3, 3).is_empty());
        assert!(hilbert_3d(3, 0, 3).is_empty());
        assert!(hilbert_3d(3, 3, 0).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        #[test]
        fn larger_boxes_are_covered_once_by_neighbour_steps(
            w in 1usize..=40, h in 1usize..=40, d in 1usize..=40
        ) {
            check(w, h, d)?;
        }
    }
}
