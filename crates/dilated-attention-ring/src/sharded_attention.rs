//! The sharded dilated attention of one rank, as a [`CustomAttention`] on the untracked
//! backend: forward and FlashAttention-style backward, exchanging only dilated key/value rows.
//!
//! Per (pair, offset group), a rank's selected rows fall into segments it owns whole, computed
//! locally with no communication, and segments shared with other ranks. For the shared ones the
//! ranks run `world_size - 1` steps: at step `t` rank `r` sends to `r + t` the key/value rows
//! that rank's queries need (only rows of shared segments, and under causal masking only rows
//! at or before the receiver's last query) and receives from `r - t` the rows it needs, then
//! merges the block into its running output by log-sum-exp (LongNet sec. 3.1; the ring's merge).
//! One block is live at a time, so memory per step is constant in the world size. A shared block
//! runs in pieces on the fused kernels where the backend has them ([`crate::fused_block`]: the
//! forward through the single-device path, the backward through the fused backward with the
//! final LSE), and so do owned segments (gathered whole, one fused call per batch of segments);
//! backends without kernels run both on Burn ops ([`crate::block`]).
//!
//! The backward recomputes the same blocks from the final log-sum-exp (FlashAttention-2): each
//! step receives the peer's keys again, adds the block's query gradient locally, and sends the
//! key/value gradients of the received rows back to their owner, which adds them to its own.
//! The traffic of the backward is twice the forward's.

use std::sync::Arc;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, TensorPrimitive, backend::Backend};
use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, DilatedAttentionError, PairPlan, Result, index_tensor,
    merge_by_lse,
};
use dilated_attention_kernels::{CustomAttention, DilatedAttentionBackend};

use crate::block::{block_forward, narrow_to, wide};
use crate::fused_block::{BlockRows, FusedCall, fused_block_forward, fused_segments_forward};
use crate::pair_results::PairResults;
use crate::shard_plan::{GroupShard, Row, ShardPlan};
use crate::{Communicator, ShardLayout};

/// One rank's sharded attention; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct ShardedAttention<B: Backend> {
    pub communicator: Arc<dyn Communicator<B>>,
    pub layout: ShardLayout,
    pub plan: ShardPlan,
    pub config: DilatedAttentionConfig,
    /// Start step `t + 1`'s transfer before step `t`'s compute (forward).
    pub overlap: bool,
    /// Local shape: `seq` is this rank's length.
    pub shape: AttentionShape,
    /// Local key padding mask `[batch, local seq]`, true = padded.
    pub key_padding_mask: Option<Tensor<B, 2, Bool>>,
}

impl<B: Backend> ShardedAttention<B> {
    pub(crate) fn groups(&self) -> impl Iterator<Item = &GroupShard> {
        self.plan.pairs.iter().flat_map(|(_, groups)| groups.iter())
    }

    pub(crate) fn scale(&self) -> f64 {
        self.config.scale_for(self.shape.head_dim)
    }

    /// The settings of this op's fused calls, run in `dtype`.
    pub(crate) fn fused_call(&self, dtype: DType) -> FusedCall {
        FusedCall {
            dtype,
            scale: self.scale(),
            kernel_strategy: self.config.kernel_strategy,
        }
    }

    pub(crate) fn device(&self) -> burn::tensor::Device<B> {
        self.communicator.device().clone()
    }

    pub(crate) fn index(&self, values: impl Iterator<Item = usize>) -> Tensor<B, 1, Int> {
        index_tensor(values, &self.device())
    }

    /// `[batch, seq, heads, ..]` restricted to a group's heads and the given local rows.
    ///
    /// Callers never ask for no rows: an op over a zero-size tensor launches a kernel over no
    /// cubes, which CUDA rejects (`CUDA_ERROR_INVALID_VALUE` through Burn's fusion), as a
    /// head-grouped config whose first pair stays inside the shards would ask.
    pub(crate) fn gather<const D: usize>(
        &self,
        t: &Tensor<B, D>,
        heads: &[usize],
        locals: &[usize],
    ) -> Tensor<B, D> {
        debug_assert!(
            !locals.is_empty() && !heads.is_empty(),
            "the sharded path gathers no rows"
        );
        let t = if heads.len() == self.shape.num_heads {
            t.clone()
        } else {
            t.clone().select(2, self.index(heads.iter().copied()))
        };
        t.select(1, self.index(locals.iter().copied()))
    }

    /// Rows `[batch, m, ..]` at local indices `locals`, put into `[batch, local seq, ..]` with
    /// `fill` everywhere else.
    pub(crate) fn scatter<const D: usize>(
        &self,
        rows: Option<Tensor<B, D>>,
        locals: &[usize],
        dims: [usize; D],
        fill: f32,
    ) -> Tensor<B, D> {
        let device = self.device();
        let Some(rows) = rows else {
            return Tensor::full(dims, fill, &device);
        };
        let mut one = dims;
        one[1] = 1;
        let padded = Tensor::cat(vec![rows, Tensor::full(one, fill, &device)], 1);
        let mut map = vec![locals.len(); self.shape.seq_len];
        for (i, &local) in locals.iter().enumerate() {
            map[local] = i;
        }
        padded.select(1, self.index(map.into_iter()))
    }

    /// A pair's per-group tensors `[batch, seq, group heads, ..]`, concatenated into the pair's
    /// heads in head order.
    pub(crate) fn pair_heads<const D: usize>(
        &self,
        pair: &PairPlan,
        per_group: Vec<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let order = pair.heads_in_group_order();
        let joined = Tensor::cat(per_group, 2);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        if sorted == order {
            return joined;
        }
        let mut inverse = vec![0; order.len()];
        for (i, &h) in sorted.iter().enumerate() {
            inverse[i] = order
                .iter()
                .position(|&o| o == h)
                .expect("a head of the pair");
        }
        joined.select(2, self.index(inverse.into_iter()))
    }

    /// `1 - padding` of the whole sequence `[batch, seq]` (every rank's mask, all-gathered),
    /// and of this rank's tokens `[batch, local seq]`; `None` without a mask.
    pub(crate) fn keep_masks(&self) -> Result<Option<(Tensor<B, 2>, Tensor<B, 2>)>> {
        let Some(mask) = &self.key_padding_mask else {
            return Ok(None);
        };
        let local = mask.clone().float().neg().add_scalar(1.0);
        let batch = self.shape.batch;
        let flat = local.clone().reshape([batch * self.shape.seq_len]);
        let parts = self
            .communicator
            .all_gather(flat)?
            .into_iter()
            .enumerate()
            .map(|(rank, t)| t.reshape([batch, self.layout.local_len(rank)]))
            .collect();
        Ok(Some((self.layout.unshard(parts), local)))
    }

    /// Visibility of shared query rows over received key rows: same segment, causal, not padded.
    pub(crate) fn shared_visibility(
        &self,
        segment_length: usize,
        queries: &[Row],
        keys: &[Row],
        key_keep: Option<Tensor<B, 2>>,
    ) -> impl Fn(core::ops::Range<usize>) -> Option<Tensor<B, 4>> {
        let causal = self.config.causal;
        let device = self.device();
        let (q_pos, k_pos): (Vec<usize>, Vec<usize>) = (
            queries.iter().map(|r| r.position).collect(),
            keys.iter().map(|r| r.position).collect(),
        );
        let batch = self.shape.batch;
        move |rows| {
            let visible: Vec<f32> = q_pos[rows.clone()]
                .iter()
                .flat_map(|&q| {
                    k_pos.iter().map(move |&k| {
                        let same = q / segment_length == k / segment_length;
                        f32::from(u8::from(same && (!causal || k <= q)))
                    })
                })
                .collect();
            let (m, n) = (rows.len(), k_pos.len());
            let visible = Tensor::<B, 1>::from_data(TensorData::new(visible, [m * n]), &device)
                .reshape([1, 1, m, n]);
            Some(match &key_keep {
                None => visible,
                Some(keep) => {
                    visible.expand([batch, 1, m, n])
                        * keep
                            .clone()
                            .reshape([batch, 1, 1, n])
                            .expand([batch, 1, m, n])
                }
            })
        }
    }

    /// Visibility inside owned segments of `rows` rows each: causal, not padded.
    pub(crate) fn owned_visibility(
        &self,
        segments: usize,
        rows_per_segment: usize,
        key_keep: Option<Tensor<B, 2>>,
    ) -> impl Fn(core::ops::Range<usize>) -> Option<Tensor<B, 4>> {
        let causal = self.config.causal;
        let device = self.device();
        let batch = self.shape.batch;
        let m = rows_per_segment;
        move |rows| {
            let len = rows.len();
            let tri = causal.then(|| {
                let data: Vec<f32> = rows
                    .clone()
                    .flat_map(|q| (0..m).map(move |k| f32::from(u8::from(k <= q))))
                    .collect();
                Tensor::<B, 1>::from_data(TensorData::new(data, [len * m]), &device)
                    .reshape([1, 1, len, m])
            });
            let keep = key_keep.as_ref().map(|keep| {
                keep.clone()
                    .reshape([batch, segments, 1, m])
                    .expand([batch, segments, len, m])
            });
            match (tri, keep) {
                (None, None) => None,
                (Some(t), None) => Some(t),
                (None, Some(k)) => Some(k),
                (Some(t), Some(k)) => Some(t.expand([batch, segments, len, m]) * k),
            }
        }
    }
}

pub(crate) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn five<B: Backend>(t: Tensor<B, 4>, segments: usize) -> Tensor<B, 5> {
    let [b, m, h, d] = t.dims();
    t.reshape([b, segments, m / segments, h, d])
}

impl<B: DilatedAttentionBackend> CustomAttention<B> for ShardedAttention<B> {
    fn forward(
        &self,
        query: FloatTensor<B>,
        key: FloatTensor<B>,
        value: FloatTensor<B>,
    ) -> Result<(FloatTensor<B>, FloatTensor<B>)> {
        let (q_in, k_in, v_in): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) =
            (float(query), float(key), float(value));
        let dtype = q_in.dtype();
        let [batch, seq, _, head_dim] = self.shape.dims();
        let scale = self.scale();
        let call = self.fused_call(dtype);
        let keep = self.keep_masks()?;
        let groups: Vec<&GroupShard> = self.groups().collect();

        // owned segments: local, no communication; gathered whole segments on the fused kernels,
        // or the masked Burn-ops block in f32. Run pair by pair after the steps (below), so that
        // only one pair's owned rows are held at a time.
        let owned_forward = |g: &GroupShard| -> Result<Vec<(Tensor<B, 4>, Tensor<B, 3>)>> {
            let mut parts = Vec::new();
            for batch_rows in &g.owned {
                let pick = |t: &Tensor<B, 4>| self.gather(t, &g.heads, &batch_rows.locals);
                let key_keep = keep.as_ref().map(|(_, local)| {
                    local
                        .clone()
                        .select(1, self.index(batch_rows.locals.iter().copied()))
                });
                let (q, k, v) = (pick(&q_in), pick(&k_in), pick(&v_in));
                let fused = fused_segments_forward(
                    &q,
                    &k,
                    &v,
                    key_keep.as_ref(),
                    batch_rows.rows,
                    self.config.causal,
                    &call,
                )?;
                let rows = batch_rows.locals.len();
                parts.push(match fused {
                    Some(part) => part,
                    None => {
                        let visible =
                            self.owned_visibility(batch_rows.segments, batch_rows.rows, key_keep);
                        let segments = |t: Tensor<B, 4>| five(wide(t), batch_rows.segments);
                        let (o, l) =
                            block_forward(segments(q), segments(k), segments(v), &visible, scale);
                        (
                            o.reshape([batch, rows, g.heads.len(), head_dim]),
                            l.reshape([batch, rows, g.heads.len()]),
                        )
                    }
                });
            }
            Ok(parts)
        };

        // shared segments: one step per peer, merged as blocks arrive
        // in the inputs' dtype (groups with no shared rows, such as a head-grouped pair inside the
        // shards, have none)
        let shared_q: Vec<Option<Tensor<B, 4>>> = groups
            .iter()
            .map(|g| {
                (!g.shared.is_empty()).then(|| {
                    self.gather(
                        &q_in,
                        &g.heads,
                        &g.shared.iter().map(|r| r.local).collect::<Vec<_>>(),
                    )
                })
            })
            .collect();
        let mut shared: Vec<Option<(Tensor<B, 4>, Tensor<B, 3>)>> = vec![None; groups.len()];
        // step t + 1's transfer starts before step t's blocks are queued, so that it overlaps
        // their compute where the communicator allows (NCCL's own stream; in-process buffered
        // sends). Forward only: the backward's key and gradient transfers share the channels.
        let world = self.communicator.world_size();
        let rank = self.plan.rank;
        let at_step = |step: usize| {
            move |cause| DilatedAttentionError::RingStep {
                rank,
                step,
                phase: "forward",
                cause: Box::new(cause),
            }
        };
        let mut next = Some(self.start_keys(0, &k_in, &v_in).map_err(at_step(0))?);
        for t in 0..world {
            let step = match next.take() {
                Some(step) => step,
                None => self.start_keys(t, &k_in, &v_in).map_err(at_step(t))?,
            };
            let blocks = self.finish_keys(step).map_err(at_step(t))?;
            if self.overlap && t + 1 < world {
                next = Some(
                    self.start_keys(t + 1, &k_in, &v_in)
                        .map_err(at_step(t + 1))?,
                );
            }
            for (i, block) in blocks.into_iter().enumerate() {
                let Some((rows, kb, vb)) = block else {
                    continue;
                };
                let g = groups[i];
                let key_keep = keep.as_ref().map(|(global, _)| {
                    global
                        .clone()
                        .select(1, self.index(rows.iter().map(|r| r.position)))
                });
                let query = shared_q[i]
                    .as_ref()
                    .expect("a group with a key block has shared rows");
                let block_rows = BlockRows::of(g, &rows, self.config.causal);
                let fused =
                    fused_block_forward(query, &kb, &vb, key_keep.as_ref(), &block_rows, &call)?;
                let part = match fused {
                    Some(part) => part,
                    None => {
                        let visible =
                            self.shared_visibility(g.segment_length, &g.shared, &rows, key_keep);
                        let (o, l) = block_forward(
                            wide(query.clone()).unsqueeze_dim(1),
                            wide(kb).unsqueeze_dim(1),
                            wide(vb).unsqueeze_dim(1),
                            &visible,
                            scale,
                        );
                        (o.squeeze_dim::<4>(1), l.squeeze_dim::<3>(1))
                    }
                };
                shared[i] = Some(match shared[i].take() {
                    None => part,
                    Some(acc) => merge_by_lse(vec![acc, part]),
                });
            }
        }

        // rows back in place, groups into pairs, pairs combined as they finish
        let mut results = PairResults::new(self.config.mode);
        let mut i = 0;
        for (pair, pair_groups) in &self.plan.pairs {
            let mut outs = Vec::new();
            let mut lses = Vec::new();
            for g in pair_groups {
                let mut parts = owned_forward(g)?;
                if let Some(s) = shared[i].take() {
                    parts.push(s);
                }
                let (o, l): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
                let locals = g.all_locals();
                let hg = g.heads.len();
                let nonempty = !o.is_empty();
                outs.push(self.scatter(
                    nonempty.then(|| Tensor::cat(o, 1)),
                    &locals,
                    [batch, seq, hg, head_dim],
                    0.0,
                ));
                lses.push(self.scatter(
                    nonempty.then(|| Tensor::cat(l, 1)),
                    &locals,
                    [batch, seq, hg],
                    f32::NEG_INFINITY,
                ));
                i += 1;
            }
            results.push(
                (self.pair_heads(pair, outs), self.pair_heads(pair, lses)),
                |acc, result| merge_by_lse(vec![acc, result]),
            );
        }
        let (out, lse) = results.finish(|parts| {
            let (outs, lses): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
            (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
        });
        // the LSE stays f32: Autodiff keeps it for the backward (whose recomputation needs it
        // exact; in half precision a rounded LSE scales every weight by up to 2^-8) and gives the
        // caller a copy in the output's dtype; `RingDilatedAttention` casts it for the others
        let out = narrow_to(out, dtype);
        Ok((out.into_primitive().tensor(), lse.into_primitive().tensor()))
    }

    fn backward(
        &self,
        inputs: [FloatTensor<B>; 3],
        output: FloatTensor<B>,
        lse: FloatTensor<B>,
        grad_output: Option<FloatTensor<B>>,
        grad_lse: Option<FloatTensor<B>>,
    ) -> Result<[FloatTensor<B>; 3]> {
        self.sharded_backward(inputs, output, lse, grad_output, grad_lse)
    }
}
