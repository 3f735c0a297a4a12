//! [`ShardLayout`]: which global positions each rank holds.

use core::ops::Range;

use burn::tensor::{BasicOps, Tensor, TensorKind, backend::Backend};
use dilated_attention_core::{DilatedAttentionError, Result};

/// Which global sequence positions each rank holds.
///
/// A rank holds one or more ranges of positions; its local tensor is those ranges in order,
/// along the sequence dimension (dim 1 of `[batch, seq, ...]`). Contiguous shards (any lengths,
/// so a sequence that does not divide by the world size is handled) and zigzag shards (rank `i`
/// holds chunks `i` and `2w - 1 - i` of `2w`, which balances causal work) are built in.
///
/// ```
/// use dilated_attention_ring::ShardLayout;
///
/// let even = ShardLayout::contiguous(10, 3)?;           // 4 + 3 + 3 tokens
/// assert_eq!(even.ranges(0), &[0..4]);
/// assert_eq!(even.ranges(2), &[7..10]);
/// let zigzag = ShardLayout::zigzag(16, 2)?;             // chunks of 4: rank 0 holds 0 and 3
/// assert_eq!(zigzag.ranges(0), &[0..4, 12..16]);
/// assert_eq!(zigzag.local_index(0, 13), Some(5));
/// # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardLayout {
    seq_len: usize,
    ranges: Vec<Vec<Range<usize>>>,
}

impl ShardLayout {
    /// Contiguous shards of near-equal length: the first `seq_len % world_size` ranks hold one
    /// token more.
    ///
    /// # Errors
    /// [`InvalidShards`](DilatedAttentionError::InvalidShards) when `world_size` is 0 or larger
    /// than `seq_len` (every rank needs a token).
    pub fn contiguous(seq_len: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 || world_size > seq_len {
            return Err(invalid(format!(
                "{seq_len} tokens cannot be split over {world_size} ranks; every rank needs at least one token"
            )));
        }
        let lengths: Vec<usize> = (0..world_size)
            .map(|r| seq_len / world_size + usize::from(r < seq_len % world_size))
            .collect();
        Self::from_lengths(&lengths)
    }

    /// Contiguous shards of the given lengths, rank 0 first.
    ///
    /// # Errors
    /// [`InvalidShards`](DilatedAttentionError::InvalidShards) for no ranks or a rank of length 0.
    pub fn from_lengths(lengths: &[usize]) -> Result<Self> {
        let mut start = 0;
        let ranges = lengths
            .iter()
            .map(|&len| {
                let range = start..start + len;
                start += len;
                vec![range]
            })
            .collect();
        Self::from_ranges(start, ranges)
    }

    /// Zigzag shards: the sequence is cut into `2 * world_size` near-equal chunks and rank `i`
    /// holds chunks `i` and `2 * world_size - 1 - i`, so that under causal masking every rank
    /// has the same work.
    ///
    /// # Errors
    /// [`InvalidShards`](DilatedAttentionError::InvalidShards) when `world_size` is 0 or
    /// `seq_len < 2 * world_size`.
    pub fn zigzag(seq_len: usize, world_size: usize) -> Result<Self> {
        let chunks = 2 * world_size;
        if world_size == 0 || seq_len < chunks {
            return Err(invalid(format!(
                "zigzag needs at least 2 tokens per rank: {seq_len} tokens over {world_size} ranks"
            )));
        }
        let bounds: Vec<usize> = (0..=chunks)
            .map(|c| c * (seq_len / chunks) + c.min(seq_len % chunks))
            .collect();
        let chunk = |c: usize| bounds[c]..bounds[c + 1];
        let ranges = (0..world_size)
            .map(|r| vec![chunk(r), chunk(chunks - 1 - r)])
            .collect();
        Self::from_ranges(seq_len, ranges)
    }

    /// Any layout: `ranges[rank]` lists the rank's position ranges in local order.
    ///
    /// # Errors
    /// [`InvalidShards`](DilatedAttentionError::InvalidShards) unless the ranges are non-empty
    /// and cover `0..seq_len` exactly once, and every rank holds at least one token.
    pub fn from_ranges(seq_len: usize, ranges: Vec<Vec<Range<usize>>>) -> Result<Self> {
        if ranges.is_empty() {
            return Err(invalid("a layout needs at least one rank".into()));
        }
        let mut all: Vec<Range<usize>> = Vec::new();
        for (rank, list) in ranges.iter().enumerate() {
            if list.iter().map(|r| r.len()).sum::<usize>() == 0 {
                return Err(invalid(format!("rank {rank} holds no token")));
            }
            if let Some(r) = list.iter().find(|r| r.is_empty()) {
                return Err(invalid(format!("rank {rank} has an empty range {r:?}")));
            }
            all.extend(list.iter().cloned());
        }
        all.sort_by_key(|r| r.start);
        let mut next = 0;
        for r in &all {
            if r.start != next {
                return Err(invalid(format!(
                    "positions {}..{} are {} (ranges must cover 0..{seq_len} exactly once)",
                    next.min(r.start),
                    next.max(r.start),
                    if r.start > next {
                        "held by no rank"
                    } else {
                        "held twice"
                    }
                )));
            }
            next = r.end;
        }
        if next != seq_len {
            return Err(invalid(format!(
                "the ranges cover 0..{next} but the sequence has {seq_len} tokens"
            )));
        }
        Ok(Self { seq_len, ranges })
    }

    /// Global sequence length.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.ranges.len()
    }

    /// The ranges rank `rank` holds, in local order.
    ///
    /// # Panics
    /// If `rank >= world_size`.
    pub fn ranges(&self, rank: usize) -> &[Range<usize>] {
        &self.ranges[rank]
    }

    /// Number of tokens rank `rank` holds.
    pub fn local_len(&self, rank: usize) -> usize {
        self.ranges[rank].iter().map(|r| r.len()).sum()
    }

    /// The local index of global position `pos` on `rank`, if the rank holds it.
    pub fn local_index(&self, rank: usize, pos: usize) -> Option<usize> {
        let mut base = 0;
        for r in &self.ranges[rank] {
            if r.contains(&pos) {
                return Some(base + pos - r.start);
            }
            base += r.len();
        }
        None
    }

    /// The global positions of rank `rank`'s tokens, in local order.
    pub fn positions(&self, rank: usize) -> impl Iterator<Item = usize> + '_ {
        self.ranges[rank].iter().flat_map(|r| r.clone())
    }

    /// Rank `rank`'s shard of a global tensor `[batch, seq, ...]`.
    ///
    /// # Errors
    /// [`InvalidShards`](DilatedAttentionError::InvalidShards) when the tensor's sequence is not
    /// the layout's length (a longer tensor is not cut short) or `rank` is not one of the
    /// layout's ranks.
    pub fn shard<B: Backend, const D: usize, K: TensorKind<B> + BasicOps<B>>(
        &self,
        tensor: Tensor<B, D, K>,
        rank: usize,
    ) -> Result<Tensor<B, D, K>> {
        let dims = tensor.dims();
        if D < 2 || dims[1] != self.seq_len {
            return Err(invalid(format!(
                "a tensor of shape {dims:?} cannot be sharded along dim 1 by a layout of {} positions",
                self.seq_len
            )));
        }
        let ranges = self.ranges.get(rank).ok_or_else(|| {
            invalid(format!(
                "rank {rank} is not one of the layout's {} ranks",
                self.world_size()
            ))
        })?;
        let parts: Vec<_> = ranges
            .iter()
            .map(|r| tensor.clone().narrow(1, r.start, r.len()))
            .collect();
        Ok(Tensor::cat(parts, 1))
    }

    /// The global tensor from every rank's shard (rank order), the inverse of [`Self::shard`].
    ///
    /// # Panics
    /// If `shards` does not have one tensor per rank of the layout's lengths.
    pub fn unshard<B: Backend, const D: usize, K: TensorKind<B> + BasicOps<B>>(
        &self,
        shards: Vec<Tensor<B, D, K>>,
    ) -> Tensor<B, D, K> {
        assert_eq!(shards.len(), self.world_size(), "one shard per rank");
        let mut pieces: Vec<(usize, Tensor<B, D, K>)> = Vec::new();
        for (rank, shard) in shards.into_iter().enumerate() {
            let mut base = 0;
            for r in &self.ranges[rank] {
                pieces.push((r.start, shard.clone().narrow(1, base, r.len())));
                base += r.len();
            }
        }
        pieces.sort_by_key(|(start, _)| *start);
        Tensor::cat(pieces.into_iter().map(|(_, t)| t).collect(), 1)
    }
}

fn invalid(reason: String) -> DilatedAttentionError {
    DilatedAttentionError::InvalidShards { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn uneven_contiguous_shards_cover_the_sequence() {
        let layout = ShardLayout::contiguous(11, 4).unwrap();
        let lens: Vec<_> = (0..4).map(|r| layout.local_len(r)).collect();
        assert_eq!(lens, vec![3, 3, 3, 2]);
        assert_eq!(layout.local_index(3, 10), Some(1));
        assert_eq!(layout.local_index(2, 10), None);
    }

    #[test]
    fn bad_layouts_are_typed_errors() {
        for err in [
            ShardLayout::contiguous(3, 4).unwrap_err(),
            ShardLayout::contiguous(3, 0).unwrap_err(),
            ShardLayout::from_lengths(&[2, 0, 3]).unwrap_err(),
            ShardLayout::zigzag(5, 3).unwrap_err(),
            ShardLayout::from_ranges(6, vec![vec![0..3], vec![2..6]]).unwrap_err(),
            ShardLayout::from_ranges(6, vec![vec![0..3], vec![4..6]]).unwrap_err(),
            ShardLayout::from_ranges(7, vec![vec![0..3], vec![3..6]]).unwrap_err(),
        ] {
            assert!(
                matches!(err, DilatedAttentionError::InvalidShards { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn shard_then_unshard_is_the_identity() {
        let device = Default::default();
        let x = Tensor::<NdArray, 3>::random([2, 23, 3], Distribution::Default, &device);
        for layout in [
            ShardLayout::contiguous(23, 3).unwrap(),
            ShardLayout::zigzag(23, 3).unwrap(),
        ] {
            let shards = (0..3)
                .map(|r| layout.shard(x.clone(), r).unwrap())
                .collect();
            layout
                .unshard(shards)
                .into_data()
                .assert_approx_eq::<f32>(&x.to_data(), Tolerance::rel_abs(0.0, 0.0));
        }
    }

    #[test]
    fn shard_rejects_a_tensor_of_another_length_and_an_unknown_rank() {
        let device = Default::default();
        let layout = ShardLayout::contiguous(23, 3).unwrap();
        for len in [22, 24] {
            let x = Tensor::<NdArray, 3>::random([2, len, 3], Distribution::Default, &device);
            let err = layout.shard(x, 0).unwrap_err();
            assert!(
                matches!(err, DilatedAttentionError::InvalidShards { .. }),
                "{err}"
            );
        }
        let x = Tensor::<NdArray, 3>::random([2, 23, 3], Distribution::Default, &device);
        assert!(layout.shard(x, 3).is_err());
    }
}
