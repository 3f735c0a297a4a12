//! The index plan: which positions each (pair, offset) selects and which heads use it.
//!
//! Plain Rust, no tensors: the reference path, the kernels and the ring all read their
//! positions from here, so the semantics of `DESIGN.md` live in one place.
//!
//! ```
//! use dilated_attention_core::{DilatedAttentionConfig, DilatedIndexPlan};
//!
//! // seq 10, one pair (segment 4, dilation 2), 3 heads in LongNet mode.
//! let cfg = DilatedAttentionConfig::new(vec![4], vec![2]);
//! let plan = DilatedIndexPlan::new(&cfg, 10, 3).unwrap();
//! let pair = &plan.pairs()[0];
//! // heads 0 and 2 use offset 0, head 1 uses offset 1
//! assert_eq!(pair.groups[0].heads, vec![0, 2]);
//! assert_eq!(pair.groups[1].heads, vec![1]);
//! // segments [0,4) [4,8) [8,10): offset 0 selects 0,2 | 4,6 | 8 ; offset 1 selects 1,3 | 5,7 | 9
//! assert_eq!(pair.groups[0].rows.positions().collect::<Vec<_>>(), vec![0, 2, 4, 6, 8]);
//! assert_eq!(pair.groups[1].rows.positions().collect::<Vec<_>>(), vec![1, 3, 5, 7, 9]);
//! ```

use crate::{DilatedAttentionConfig, DilatedAttentionError, DilationMode, Result};

/// Number of positions `offset, offset + rate, ... < len`.
pub fn rows_selected(offset: usize, len: usize, rate: usize) -> usize {
    if offset >= len {
        0
    } else {
        (len - offset).div_ceil(rate)
    }
}

/// The positions one offset of one pair selects in a sequence, segment by segment.
///
/// Segments are `[a, min(a + segment_length, seq_len))` for `a = 0, s, 2s, ...`; inside each, the
/// positions `a + offset, a + offset + dilation, ...` are selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SelectedRows {
    /// Sequence length `n`.
    pub seq_len: usize,
    /// Segment length, already clamped to `n`.
    pub segment_length: usize,
    /// Dilation rate.
    pub dilation: usize,
    /// Offset inside each segment.
    pub offset: usize,
}

impl SelectedRows {
    /// Number of segments of full length.
    pub fn full_segments(&self) -> usize {
        self.seq_len / self.segment_length
    }

    /// Rows selected in one full segment.
    pub fn rows_per_full_segment(&self) -> usize {
        rows_selected(self.offset, self.segment_length, self.dilation)
    }

    /// Length of the last, shorter segment (0 when `n` is a multiple of the segment length).
    pub fn tail_length(&self) -> usize {
        self.seq_len % self.segment_length
    }

    /// Rows selected in the last, shorter segment.
    pub fn rows_in_tail(&self) -> usize {
        rows_selected(self.offset, self.tail_length(), self.dilation)
    }

    /// Start of the tail segment.
    pub fn tail_start(&self) -> usize {
        self.full_segments() * self.segment_length
    }

    /// Total number of selected rows.
    pub fn len(&self) -> usize {
        self.full_segments() * self.rows_per_full_segment() + self.rows_in_tail()
    }

    /// True when this offset selects no row at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every position of the sequence is selected, in order.
    pub fn is_identity(&self) -> bool {
        self.dilation == 1 && self.offset == 0
    }

    /// The selected positions, in increasing order (segment by segment).
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        let s = self.segment_length;
        let full = self.full_segments();
        let per = self.rows_per_full_segment();
        let full_rows = (0..full)
            .flat_map(move |seg| (0..per).map(move |t| seg * s + self.offset + t * self.dilation));
        let tail_start = self.tail_start();
        let tail_rows =
            (0..self.rows_in_tail()).map(move |t| tail_start + self.offset + t * self.dilation);
        full_rows.chain(tail_rows)
    }

    /// For every position of the sequence, its index among the selected rows, or `len()` when
    /// the position is not selected (the index of an appended "empty" row).
    pub fn scatter_index(&self) -> Vec<usize> {
        let empty = self.len();
        let mut index = vec![empty; self.seq_len];
        for (rank, pos) in self.positions().enumerate() {
            index[pos] = rank;
        }
        index
    }
}

/// The heads of one pair that share an offset, and the rows that offset selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetGroup {
    /// Offset inside each segment.
    pub offset: usize,
    /// Heads (indices into the head dimension) that use this offset, increasing.
    pub heads: Vec<usize>,
    /// The positions selected.
    pub rows: SelectedRows,
}

/// One (segment length, dilation rate) pair, resolved for a sequence length and head count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPlan {
    /// Index of the pair in the config.
    pub pair: usize,
    /// Segment length clamped to the sequence length.
    pub segment_length: usize,
    /// Dilation rate.
    pub dilation: usize,
    /// The offset groups of this pair; together their heads are the heads that use the pair.
    pub groups: Vec<OffsetGroup>,
}

impl PairPlan {
    /// Heads that use this pair, in the order the groups list them.
    pub fn heads_in_group_order(&self) -> Vec<usize> {
        self.groups
            .iter()
            .flat_map(|g| g.heads.iter().copied())
            .collect()
    }
}

/// The full index plan of a config for one sequence length and head count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DilatedIndexPlan {
    seq_len: usize,
    num_heads: usize,
    mode: DilationMode,
    pairs: Vec<PairPlan>,
}

impl DilatedIndexPlan {
    /// Resolves `config` for a sequence of `seq_len` tokens and `num_heads` heads.
    ///
    /// # Errors
    /// Any error of [`DilatedAttentionConfig::validate`]; [`DilatedAttentionError::ZeroSize`] for
    /// `seq_len` or `num_heads` 0; [`DilatedAttentionError::TooFewHeads`] in `HeadGrouped` mode
    /// with fewer heads than pairs.
    pub fn new(config: &DilatedAttentionConfig, seq_len: usize, num_heads: usize) -> Result<Self> {
        config.validate()?;
        if seq_len == 0 {
            return Err(DilatedAttentionError::ZeroSize { field: "seq_len" });
        }
        if num_heads == 0 {
            return Err(DilatedAttentionError::ZeroSize { field: "num_heads" });
        }
        let pair_count = config.num_pairs();
        if config.mode == DilationMode::HeadGrouped && num_heads < pair_count {
            return Err(DilatedAttentionError::TooFewHeads {
                heads: num_heads,
                groups: pair_count,
            });
        }
        let pairs = (0..pair_count)
            .map(|pair| {
                let segment_length = config.segment_lengths[pair].min(seq_len);
                let dilation = config.dilation_rates[pair];
                let rows = |offset| SelectedRows {
                    seq_len,
                    segment_length,
                    dilation,
                    offset,
                };
                let groups = match config.mode {
                    DilationMode::LongNet => (0..dilation.min(num_heads))
                        .map(|offset| OffsetGroup {
                            offset,
                            heads: (offset..num_heads).step_by(dilation).collect(),
                            rows: rows(offset),
                        })
                        .collect(),
                    DilationMode::HeadGrouped => {
                        let heads = head_group_range(num_heads, pair_count, pair);
                        let offset = pair % dilation;
                        vec![OffsetGroup {
                            offset,
                            heads: heads.collect(),
                            rows: rows(offset),
                        }]
                    }
                };
                PairPlan {
                    pair,
                    segment_length,
                    dilation,
                    groups,
                }
            })
            .collect();
        Ok(Self {
            seq_len,
            num_heads,
            mode: config.mode,
            pairs,
        })
    }

    /// Sequence length the plan was resolved for.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Head count the plan was resolved for.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The mode of the config.
    pub fn mode(&self) -> DilationMode {
        self.mode
    }

    /// One entry per (segment length, dilation rate) pair.
    pub fn pairs(&self) -> &[PairPlan] {
        &self.pairs
    }
}

/// Heads of group `group` when `num_heads` heads are split into `groups` contiguous groups of
/// sizes `num_heads / groups`, the first `num_heads % groups` one larger.
pub fn head_group_range(num_heads: usize, groups: usize, group: usize) -> core::ops::Range<usize> {
    let base = num_heads / groups;
    let extra = num_heads % groups;
    let start = group * base + group.min(extra);
    let len = base + usize::from(group < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force_positions(n: usize, s: usize, r: usize, o: usize) -> Vec<usize> {
        let s = s.min(n);
        (0..n)
            .filter(|&p| {
                let within = p % s;
                within >= o && (within - o).is_multiple_of(r)
            })
            .collect()
    }

    #[test]
    fn selected_positions_match_definition_for_odd_shapes() {
        for n in [1, 2, 7, 97, 100, 128] {
            for s in [1, 3, 8, 50, 128, 1000] {
                for r in [1, 2, 3, 5] {
                    for o in 0..r {
                        let rows = SelectedRows {
                            seq_len: n,
                            segment_length: s.min(n),
                            dilation: r,
                            offset: o,
                        };
                        let got: Vec<_> = rows.positions().collect();
                        assert_eq!(
                            got,
                            brute_force_positions(n, s, r, o),
                            "n{n} s{s} r{r} o{o}"
                        );
                        assert_eq!(rows.len(), got.len());
                    }
                }
            }
        }
    }

    #[test]
    fn scatter_index_inverts_positions() {
        let rows = SelectedRows {
            seq_len: 23,
            segment_length: 6,
            dilation: 4,
            offset: 1,
        };
        let idx = rows.scatter_index();
        let pos: Vec<_> = rows.positions().collect();
        for (p, &i) in idx.iter().enumerate() {
            if i == rows.len() {
                assert!(!pos.contains(&p));
            } else {
                assert_eq!(pos[i], p);
            }
        }
    }

    #[test]
    fn head_groups_cover_every_head_once_first_groups_larger() {
        for h in 1..20 {
            for g in 1..=h {
                let mut all = vec![];
                let mut sizes = vec![];
                for i in 0..g {
                    let r = head_group_range(h, g, i);
                    sizes.push(r.len());
                    all.extend(r);
                }
                assert_eq!(all, (0..h).collect::<Vec<_>>());
                assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
            }
        }
        assert_eq!(head_group_range(7, 3, 0), 0..3);
        assert_eq!(head_group_range(7, 3, 1), 3..5);
        assert_eq!(head_group_range(7, 3, 2), 5..7);
    }

    #[test]
    fn longnet_plan_assigns_offset_head_mod_rate() {
        let cfg = DilatedAttentionConfig::new(vec![8, 16], vec![1, 3]);
        let plan = DilatedIndexPlan::new(&cfg, 40, 5).unwrap();
        assert_eq!(plan.pairs()[0].groups.len(), 1);
        assert_eq!(plan.pairs()[0].groups[0].heads, vec![0, 1, 2, 3, 4]);
        let p1 = &plan.pairs()[1];
        assert_eq!(p1.groups.len(), 3);
        for g in &p1.groups {
            assert!(g.heads.iter().all(|&j| j % 3 == g.offset));
        }
        assert_eq!(p1.heads_in_group_order(), vec![0, 3, 1, 4, 2]);
    }

    #[test]
    fn head_grouped_plan_uses_pair_index_mod_rate_as_offset() {
        let cfg = DilatedAttentionConfig::new(vec![4, 8, 16], vec![1, 2, 2])
            .with_mode(DilationMode::HeadGrouped);
        let plan = DilatedIndexPlan::new(&cfg, 30, 7).unwrap();
        let offsets: Vec<_> = plan.pairs().iter().map(|p| p.groups[0].offset).collect();
        assert_eq!(offsets, vec![0, 1, 0]);
        let heads: Vec<_> = plan
            .pairs()
            .iter()
            .map(|p| p.groups[0].heads.clone())
            .collect();
        assert_eq!(heads, vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
    }

    #[test]
    fn segment_longer_than_sequence_is_clamped() {
        let cfg = DilatedAttentionConfig::new(vec![4096], vec![2]);
        let plan = DilatedIndexPlan::new(&cfg, 9, 2).unwrap();
        let rows = plan.pairs()[0].groups[1].rows;
        assert_eq!(rows.segment_length, 9);
        assert_eq!(rows.positions().collect::<Vec<_>>(), vec![1, 3, 5, 7]);
    }

    #[test]
    fn new_rejects_zero_sizes_and_too_few_heads() {
        let cfg = DilatedAttentionConfig::new(vec![4, 8], vec![1, 2]);
        assert_eq!(
            DilatedIndexPlan::new(&cfg, 0, 2),
            Err(DilatedAttentionError::ZeroSize { field: "seq_len" })
        );
        assert_eq!(
            DilatedIndexPlan::new(&cfg, 5, 0),
            Err(DilatedAttentionError::ZeroSize { field: "num_heads" })
        );
        let grouped = cfg.with_mode(DilationMode::HeadGrouped);
        assert_eq!(
            DilatedIndexPlan::new(&grouped, 5, 1),
            Err(DilatedAttentionError::TooFewHeads {
                heads: 1,
                groups: 2
            })
        );
    }
}
