//! The host side of a fused launch: the table of pairs and head offsets the kernels read, and the
//! grid that covers every (batch, head, position) exactly once.
//!
//! A cube owns the query rows `class + stride * (first + lane)` for `lane < block_rows` of one
//! (batch, head): positions of one residue class modulo the head's *row stride*. The stride is the
//! least common multiple of the dilation rates of the head's pairs whose (clamped) segment length
//! they divide, so for each such pair a cube's rows are either all selected or all not: a
//! dilated pair keeps every lane busy and a cube whose class the pair does not select skips the
//! pair without touching memory. Pairs whose segments do not divide by their rate still run
//! correctly, lane by lane, only with idle lanes.
//!
//! The table (`u32`, uploaded once per call):
//! `[pairs, (segment, dilation) x pairs, (row_stride, offset_0 .. offset_{pairs-1}) x heads]`,
//! with [`NOT_IN_PAIR`] where a head does not use a pair (head-grouped mode).

use dilated_attention_core::{DilatedAttentionConfig, DilatedIndexPlan, Result};

/// Table value of a head's offset for a pair the head does not use.
pub(crate) const NOT_IN_PAIR: u32 = u32::MAX;

/// Per-call launch data shared by the forward and backward kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LaunchPlan {
    /// The `u32` table described in the module docs.
    pub table: Vec<u32>,
    /// Cubes along x: the most any head needs (`row_stride * blocks_per_class`).
    pub blocks_x: u32,
    /// Query (or key) rows per cube.
    pub block_rows: usize,
}

impl LaunchPlan {
    /// Resolves `config` for `seq_len` positions and `num_heads` heads with cubes of
    /// `block_rows` rows.
    ///
    /// # Errors
    /// The errors of [`DilatedIndexPlan::new`].
    pub fn new(
        config: &DilatedAttentionConfig,
        seq_len: usize,
        num_heads: usize,
        block_rows: usize,
    ) -> Result<Self> {
        let plan = DilatedIndexPlan::new(config, seq_len, num_heads)?;
        let pairs = plan.pairs();
        let mut table = Vec::with_capacity(1 + 2 * pairs.len() + num_heads * (1 + pairs.len()));
        table.push(to_u32(pairs.len()));
        for pair in pairs {
            table.push(to_u32(pair.segment_length));
            table.push(to_u32(pair.dilation));
        }
        let mut blocks_x = 1;
        for head in 0..num_heads {
            let offsets: Vec<u32> = pairs
                .iter()
                .map(|pair| {
                    pair.groups
                        .iter()
                        .find(|group| group.heads.contains(&head))
                        .map_or(NOT_IN_PAIR, |group| to_u32(group.offset))
                })
                .collect();
            let mut stride = 1usize;
            for (pair, &offset) in pairs.iter().zip(&offsets) {
                if offset != NOT_IN_PAIR && pair.segment_length.is_multiple_of(pair.dilation) {
                    stride = lcm(stride, pair.dilation);
                }
            }
            if stride > seq_len {
                stride = 1;
            }
            let blocks = stride * blocks_per_class(seq_len, stride, block_rows);
            blocks_x = blocks_x.max(blocks);
            table.push(to_u32(stride));
            table.extend(offsets);
        }
        Ok(Self {
            table,
            blocks_x: to_u32(blocks_x),
            block_rows,
        })
    }
}

/// Cubes per residue class: the largest class (class 0) has `ceil(n / stride)` rows.
pub(crate) fn blocks_per_class(seq_len: usize, stride: usize, block_rows: usize) -> usize {
    seq_len.div_ceil(stride).div_ceil(block_rows)
}

fn to_u32(value: usize) -> u32 {
    // Shapes are checked against u32 addressing before a launch (see `launch::check_addressing`).
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

#[cfg(test)]
/// The rows cube `block` of `head` owns, computed as the kernels do.
pub(crate) fn rows_of_block(
    plan: &LaunchPlan,
    seq_len: usize,
    head: usize,
    block: usize,
) -> Vec<usize> {
    let pairs = plan.table[0] as usize;
    let stride = plan.table[1 + 2 * pairs + head * (1 + pairs)] as usize;
    let per_class = blocks_per_class(seq_len, stride, plan.block_rows);
    if block >= stride * per_class {
        return vec![];
    }
    let class = block / per_class;
    let first = (block % per_class) * plan.block_rows;
    (0..plan.block_rows)
        .map(|lane| class + stride * (first + lane))
        .filter(|&row| row < seq_len)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilated_attention_core::DilationMode;

    #[test]
    fn every_position_belongs_to_exactly_one_cube_per_head() {
        for (segments, rates, mode, n, heads) in [
            (vec![8, 16], vec![1, 2], DilationMode::LongNet, 67, 3),
            (
                vec![2048, 4096, 8192],
                vec![1, 2, 4],
                DilationMode::LongNet,
                1000,
                8,
            ),
            (vec![6, 9], vec![3, 4], DilationMode::HeadGrouped, 101, 5),
            (vec![7, 5, 12], vec![2, 5, 3], DilationMode::LongNet, 29, 4),
            (vec![1], vec![1], DilationMode::LongNet, 1, 1),
        ] {
            let mut cfg = DilatedAttentionConfig::new(segments, rates);
            cfg.mode = mode;
            let plan = LaunchPlan::new(&cfg, n, heads, 16).unwrap();
            for head in 0..heads {
                let mut seen = vec![0u32; n];
                for block in 0..plan.blocks_x as usize {
                    for row in rows_of_block(&plan, n, head, block) {
                        seen[row] += 1;
                    }
                }
                assert!(
                    seen.iter().all(|&count| count == 1),
                    "head {head}: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn aligned_pairs_select_all_or_none_of_a_cubes_rows() {
        let cfg = DilatedAttentionConfig::new(vec![12, 24, 48], vec![1, 2, 4]);
        let n = 200;
        let plan = LaunchPlan::new(&cfg, n, 6, 8).unwrap();
        let index = DilatedIndexPlan::new(&cfg, n, 6).unwrap();
        for (pair_index, pair) in index.pairs().iter().enumerate() {
            for group in &pair.groups {
                let selected: Vec<usize> = group.rows.positions().collect();
                for &head in &group.heads {
                    for block in 0..plan.blocks_x as usize {
                        let rows = rows_of_block(&plan, n, head, block);
                        let hits = rows.iter().filter(|r| selected.contains(r)).count();
                        assert!(
                            hits == 0 || hits == rows.len(),
                            "pair {pair_index} head {head} block {block}: {hits}/{}",
                            rows.len()
                        );
                    }
                }
            }
        }
        // LongNet mode with rates 1, 2, 4: every head's rows step by lcm = 4.
        assert_eq!(plan.table[1 + 2 * 3], 4);
    }

    #[test]
    fn head_grouped_heads_outside_a_pair_are_marked() {
        let mut cfg = DilatedAttentionConfig::new(vec![4, 8], vec![1, 2]);
        cfg.mode = DilationMode::HeadGrouped;
        let plan = LaunchPlan::new(&cfg, 16, 4, 4).unwrap();
        // head 0 uses pair 0 only (offset 0); head 3 uses pair 1 only (offset 1 % 2 = 1).
        assert_eq!(&plan.table[5..8], &[1, 0, NOT_IN_PAIR]);
        assert_eq!(&plan.table[14..17], &[2, NOT_IN_PAIR, 1]);
    }
}
