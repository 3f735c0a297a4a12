//! The host-side plan of one rank: for each (pair, offset group) of the config, which of its
//! selected rows are in segments the rank owns whole (computed locally, no communication) and
//! which are in segments shared with other ranks, and which key rows every rank needs from every
//! other rank for those (LongNet, arXiv 2307.02486, sec. 3.1: only the dilated rows travel).
//!
//! Plain Rust on positions, no tensors: every rank computes the same plan for every peer, so
//! senders and receivers agree on what each transfer holds without a handshake.

use core::ops::Range;

use dilated_attention_core::{DilatedIndexPlan, OffsetGroup, PairPlan, Result};

use crate::ShardLayout;

/// One selected row a rank holds: its global position and its local index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row {
    pub position: usize,
    pub local: usize,
}

/// Rows of whole segments a rank owns, batched: `segments` segments of `rows` rows each, the
/// local indices segment after segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentBatch {
    pub locals: Vec<usize>,
    pub segments: usize,
    pub rows: usize,
}

/// One offset group of one pair, seen from one rank.
#[derive(Debug, Clone)]
pub(crate) struct GroupShard {
    /// Heads of the group (indices into the head dimension).
    pub heads: Vec<usize>,
    /// Segment length (clamped to the sequence).
    pub segment_length: usize,
    /// Dilation rate: selected rows of a segment are this many positions apart.
    pub dilation: usize,
    /// Whole segments this rank owns: full-length ones, then the shorter tail segment.
    pub owned: Vec<SegmentBatch>,
    /// This rank's rows in segments other ranks also hold, by increasing local index.
    pub shared: Vec<Row>,
    /// `shared` rows of every rank (index = rank), to work out what each pair of ranks sends.
    shared_by_rank: Vec<Vec<Row>>,
}

impl GroupShard {
    /// The rows `from` sends to `to`: `from`'s shared rows in segments where `to` has query rows,
    /// and with causal masking only those at or before `to`'s last query row of that segment.
    pub fn keys_sent(&self, from: usize, to: usize, causal: bool) -> Vec<Row> {
        let s = self.segment_length;
        let wanted = &self.shared_by_rank[to];
        // last query position of `to` per segment (rows are sorted by position within a rank's
        // range, so scan all)
        let mut last: Vec<(usize, usize)> = Vec::new();
        for row in wanted {
            let seg = row.position / s;
            match last.iter_mut().find(|(g, _)| *g == seg) {
                Some(entry) => entry.1 = entry.1.max(row.position),
                None => last.push((seg, row.position)),
            }
        }
        self.shared_by_rank[from]
            .iter()
            .filter(|row| {
                last.iter()
                    .any(|&(seg, max)| seg == row.position / s && (!causal || row.position <= max))
            })
            .copied()
            .collect()
    }

    /// Every row this rank holds for the group: owned batches in order, then shared rows.
    pub fn all_locals(&self) -> Vec<usize> {
        self.owned
            .iter()
            .flat_map(|b| b.locals.iter().copied())
            .chain(self.shared.iter().map(|r| r.local))
            .collect()
    }
}

/// The plan of one rank: the pairs of the index plan, each with its groups.
#[derive(Debug, Clone)]
pub(crate) struct ShardPlan {
    pub rank: usize,
    pub pairs: Vec<(PairPlan, Vec<GroupShard>)>,
}

impl ShardPlan {
    pub fn new(plan: &DilatedIndexPlan, layout: &ShardLayout, rank: usize) -> Result<Self> {
        let owners = Owners::new(layout);
        let pairs = plan
            .pairs()
            .iter()
            .map(|pair| {
                let groups = pair
                    .groups
                    .iter()
                    .map(|group| group_shard(group, layout, &owners, rank))
                    .collect();
                (pair.clone(), groups)
            })
            .collect();
        Ok(Self { rank, pairs })
    }

    /// True when no group of any pair has a shared row on any rank: nothing to communicate.
    #[cfg(test)]
    pub fn is_communication_free(&self) -> bool {
        self.pairs.iter().all(|(_, groups)| {
            groups
                .iter()
                .all(|g| g.shared_by_rank.iter().all(Vec::is_empty))
        })
    }
}

/// Global position ranges sorted by start, with their owner.
struct Owners {
    ranges: Vec<(Range<usize>, usize)>,
}

impl Owners {
    fn new(layout: &ShardLayout) -> Self {
        let mut ranges: Vec<(Range<usize>, usize)> = (0..layout.world_size())
            .flat_map(|rank| layout.ranges(rank).iter().map(move |r| (r.clone(), rank)))
            .collect();
        ranges.sort_by_key(|(r, _)| r.start);
        Self { ranges }
    }

    /// Whether `rank` owns every position of `span`.
    fn owns_all(&self, rank: usize, span: Range<usize>) -> bool {
        let first = self.ranges.partition_point(|(r, _)| r.end <= span.start);
        self.ranges[first..]
            .iter()
            .take_while(|(r, _)| r.start < span.end)
            .all(|&(_, owner)| owner == rank)
    }
}

fn group_shard(
    group: &OffsetGroup,
    layout: &ShardLayout,
    owners: &Owners,
    rank: usize,
) -> GroupShard {
    let rows = group.rows;
    let s = rows.segment_length;
    let n = rows.seq_len;
    let segment_span = |seg: usize| seg * s..((seg + 1) * s).min(n);
    // (segment, row) of every selected row of a rank, in local order
    let selected = |r: usize| -> Vec<(usize, Row)> {
        let mut out = Vec::new();
        let mut base = 0;
        for range in layout.ranges(r) {
            let mut seg = range.start / s;
            while seg * s < range.end {
                let span = segment_span(seg);
                let mut pos = span.start + rows.offset;
                if pos < range.start {
                    pos += (range.start - pos).div_ceil(rows.dilation) * rows.dilation;
                }
                while pos < span.end.min(range.end) {
                    out.push((
                        seg,
                        Row {
                            position: pos,
                            local: base + pos - range.start,
                        },
                    ));
                    pos += rows.dilation;
                }
                seg += 1;
            }
            base += range.len();
        }
        out
    };
    let shared_of = |r: usize, rows_of_r: &[(usize, Row)]| -> Vec<Row> {
        rows_of_r
            .iter()
            .filter(|(seg, _)| !owners.owns_all(r, segment_span(*seg)))
            .map(|&(_, row)| row)
            .collect()
    };
    let shared_by_rank: Vec<Vec<Row>> = (0..layout.world_size())
        .map(|r| shared_of(r, &selected(r)))
        .collect();

    // this rank's owned segments, batched by row count (full segments, then the tail)
    let mine = selected(rank);
    let mut full = SegmentBatch {
        locals: Vec::new(),
        segments: 0,
        rows: rows.rows_per_full_segment(),
    };
    let mut tail = SegmentBatch {
        locals: Vec::new(),
        segments: 0,
        rows: rows.rows_in_tail(),
    };
    let mut current: Option<usize> = None;
    for &(seg, row) in &mine {
        if !owners.owns_all(rank, segment_span(seg)) {
            continue;
        }
        let batch = if segment_span(seg).len() == s {
            &mut full
        } else {
            &mut tail
        };
        if current != Some(seg) {
            batch.segments += 1;
            current = Some(seg);
        }
        batch.locals.push(row.local);
    }
    let owned = [full, tail]
        .into_iter()
        .filter(|b| b.segments > 0 && b.rows > 0)
        .collect();
    GroupShard {
        heads: group.heads.clone(),
        segment_length: s,
        dilation: rows.dilation,
        owned,
        shared: shared_by_rank[rank].clone(),
        shared_by_rank,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilated_attention_core::{DilatedAttentionConfig, DilationMode};

    fn plan(
        n: usize,
        heads: usize,
        cfg: &DilatedAttentionConfig,
        layout: &ShardLayout,
        rank: usize,
    ) -> ShardPlan {
        let index = DilatedIndexPlan::new(cfg, n, heads).unwrap();
        ShardPlan::new(&index, layout, rank).unwrap()
    }

    #[test]
    fn aligned_small_segments_need_no_communication() {
        let cfg = DilatedAttentionConfig::new(vec![4, 8], vec![1, 2]);
        let layout = ShardLayout::contiguous(32, 2).unwrap();
        assert!(plan(32, 3, &cfg, &layout, 0).is_communication_free());
        // an uneven cut through a segment does need it
        let layout = ShardLayout::from_lengths(&[13, 19]).unwrap();
        assert!(!plan(32, 3, &cfg, &layout, 0).is_communication_free());
    }

    #[test]
    fn every_selected_row_is_owned_or_shared_exactly_once() {
        let cfg = DilatedAttentionConfig::new(vec![5, 12, 40], vec![1, 3, 4])
            .with_mode(DilationMode::LongNet);
        let (n, heads) = (37, 5);
        let index = DilatedIndexPlan::new(&cfg, n, heads).unwrap();
        for layout in [
            ShardLayout::contiguous(n, 3).unwrap(),
            ShardLayout::zigzag(n, 3).unwrap(),
        ] {
            for (p, pair) in index.pairs().iter().enumerate() {
                for (g, group) in pair.groups.iter().enumerate() {
                    let mut seen: Vec<usize> = (0..3)
                        .flat_map(|rank| {
                            let shard = &plan(n, heads, &cfg, &layout, rank).pairs[p].1[g];
                            shard
                                .all_locals()
                                .into_iter()
                                .map(|local| layout.positions(rank).nth(local).unwrap())
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    seen.sort_unstable();
                    let want: Vec<usize> = group.rows.positions().collect();
                    assert_eq!(seen, want, "pair {p} group {g} {layout:?}");
                }
            }
        }
    }

    #[test]
    fn causal_sends_only_keys_before_the_receivers_last_query() {
        // one segment of 12 over 3 ranks of 4: rank 0 needs nothing from rank 2 under causal
        let cfg = DilatedAttentionConfig::new(vec![12], vec![1]).with_causal(true);
        let layout = ShardLayout::contiguous(12, 3).unwrap();
        let p = plan(12, 1, &cfg, &layout, 0);
        let group = &p.pairs[0].1[0];
        assert!(group.keys_sent(2, 0, true).is_empty());
        assert_eq!(group.keys_sent(0, 2, true).len(), 4);
        assert_eq!(group.keys_sent(2, 0, false).len(), 4);
    }
}
