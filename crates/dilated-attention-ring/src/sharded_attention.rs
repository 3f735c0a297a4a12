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

use std::cell::OnceCell;
use std::sync::Arc;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{
    Bool, DType, IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive, backend::Backend,
};
use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, DilationMode, PairPlan, Result, index_tensor,
    merge_by_lse,
};
use dilated_attention_kernels::{CustomAttention, DilatedAttentionBackend};

use crate::block::{BlockGrads, block_backward, block_forward, narrow_to, wide};
use crate::fused_block::{
    BlockBackward, BlockRows, FusedCall, fused_block_backward, fused_block_forward,
    fused_segments_backward, fused_segments_forward,
};
use crate::shard_plan::{GroupShard, Row, ShardPlan};
use crate::{Communicator, PendingExchange, Receive, ShardLayout};

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

/// Step `t`'s key/value rows, as [`ShardedAttention::start_keys`] leaves them.
enum StepKeys<'a, B: Backend> {
    /// Step 0: this rank's own shared rows.
    Own(Vec<Option<KeyBlock<B>>>),
    /// A transfer from rank `r - t` in flight, and the rows it brings for each group.
    Incoming(Box<dyn PendingExchange<B> + 'a>, Vec<Vec<Row>>),
}

/// A group's shared query rows in the backward, with their final output, f32 LSE and gradients
/// `[batch, shared rows, group heads, ..]`.
struct SharedRows<B: Backend> {
    query: Tensor<B, 4>,
    output: Tensor<B, 4>,
    grad_output: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    grad_lse: Option<Tensor<B, 3>>,
}

/// Keys one group received in one step: their rows and `[batch, rows, heads, head_dim]` blocks, in
/// the inputs' dtype (the Burn-ops blocks widen them to f32; the fused pieces take them as they are).
type KeyBlock<B> = (Vec<Row>, Tensor<B, 4>, Tensor<B, 4>);

/// The pairs' results as they finish: LongNet folds each into a running result (an LSE merge
/// forward, a sum backward), so one pair's result is live at a time besides it; HeadGrouped keeps
/// them side by side (their heads are disjoint) for one concatenation at the end.
enum PairResults<T> {
    Running(Option<T>),
    SideBySide(Vec<T>),
}

impl<T> PairResults<T> {
    fn new(mode: DilationMode) -> Self {
        match mode {
            DilationMode::LongNet => Self::Running(None),
            DilationMode::HeadGrouped => Self::SideBySide(Vec::new()),
        }
    }

    /// Adds a pair's result; `fold` merges it into the running one (LongNet).
    fn push(&mut self, result: T, fold: impl FnOnce(T, T) -> T) {
        match self {
            Self::Running(running) => {
                *running = Some(match running.take() {
                    None => result,
                    Some(acc) => fold(acc, result),
                });
            }
            Self::SideBySide(results) => results.push(result),
        }
    }

    /// The combined result; `join` concatenates side-by-side results along the heads.
    fn finish(self, join: impl FnOnce(Vec<T>) -> T) -> T {
        match self {
            Self::Running(running) => running.expect("a config has a pair"),
            Self::SideBySide(results) => join(results),
        }
    }
}

impl<B: Backend> ShardedAttention<B> {
    fn groups(&self) -> impl Iterator<Item = &GroupShard> {
        self.plan.pairs.iter().flat_map(|(_, groups)| groups.iter())
    }

    fn scale(&self) -> f64 {
        self.config.scale_for(self.shape.head_dim)
    }

    /// The settings of this op's fused calls, run in `dtype`.
    fn fused_call(&self, dtype: DType) -> FusedCall {
        FusedCall {
            dtype,
            scale: self.scale(),
            kernel_strategy: self.config.kernel_strategy,
        }
    }

    fn device(&self) -> burn::tensor::Device<B> {
        self.communicator.device().clone()
    }

    fn index(&self, values: impl Iterator<Item = usize>) -> Tensor<B, 1, Int> {
        index_tensor(values, &self.device())
    }

    /// `[batch, seq, heads, ..]` restricted to a group's heads and the given local rows.
    ///
    /// Callers never ask for no rows: an op over a zero-size tensor launches a kernel over no
    /// cubes, which CUDA rejects (`CUDA_ERROR_INVALID_VALUE` through Burn's fusion; seen on
    /// two H200s with a head-grouped config whose first pair stays inside the shards).
    fn gather<const D: usize>(
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
    fn scatter<const D: usize>(
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
    fn pair_heads<const D: usize>(
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
    fn keep_masks(&self) -> Result<Option<(Tensor<B, 2>, Tensor<B, 2>)>> {
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
    fn shared_visibility(
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
    fn owned_visibility(
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

    /// The key/value rows of every group for step `t` (0: this rank's own shared rows): sends
    /// what rank `r + t` needs, receives from `r - t`.
    fn keys_for_step(
        &self,
        t: usize,
        key: &Tensor<B, 4>,
        value: &Tensor<B, 4>,
    ) -> Result<Vec<Option<KeyBlock<B>>>> {
        let step = self.start_keys(t, key, value)?;
        self.finish_keys(step)
    }

    /// Starts step `t`'s transfer of key/value rows ([`Communicator::start_exchange`]): what
    /// rank `r + t` needs goes out, rank `r - t`'s rows come in while the caller computes.
    fn start_keys(
        &self,
        t: usize,
        key: &Tensor<B, 4>,
        value: &Tensor<B, 4>,
    ) -> Result<StepKeys<'_, B>> {
        let (me, world) = (self.plan.rank, self.communicator.world_size());
        let causal = self.config.causal;
        let [batch, _, _, head_dim] = self.shape.dims();
        if t == 0 {
            return Ok(StepKeys::Own(
                self.groups()
                    .map(|g| {
                        let rows = g.keys_sent(me, me, causal);
                        (!rows.is_empty() && !g.shared.is_empty()).then(|| {
                            let locals: Vec<usize> = rows.iter().map(|r| r.local).collect();
                            let k = self.gather(key, &g.heads, &locals);
                            let v = self.gather(value, &g.heads, &locals);
                            (rows, k, v)
                        })
                    })
                    .collect(),
            ));
        }
        let (dst, src) = ((me + t) % world, (me + world - t) % world);
        let mut payload = Vec::new();
        for g in self.groups() {
            let rows = g.keys_sent(me, dst, causal);
            if rows.is_empty() {
                continue;
            }
            let locals: Vec<usize> = rows.iter().map(|r| r.local).collect();
            for t in [key, value] {
                let part = self.gather(t, &g.heads, &locals);
                let numel = part.shape().num_elements();
                payload.push(part.reshape([numel]));
            }
        }
        let incoming: Vec<Vec<Row>> = self
            .groups()
            .map(|g| g.keys_sent(src, me, causal))
            .collect();
        let sizes: Vec<usize> = self
            .groups()
            .zip(&incoming)
            .map(|(g, rows)| batch * rows.len() * g.heads.len() * head_dim)
            .collect();
        let total: usize = sizes.iter().sum::<usize>() * 2;
        let send = (!payload.is_empty()).then(|| (dst, Tensor::cat(payload, 0)));
        let receive = (total > 0).then_some(Receive {
            from: src,
            len: total,
            dtype: key.dtype(),
        });
        let pending = self.communicator.start_exchange(send, receive)?;
        Ok(StepKeys::Incoming(pending, incoming))
    }

    /// Waits for a step's transfer: each group's received rows and blocks (`None` for a group
    /// with none, or with no shared query rows to use them).
    fn finish_keys(&self, step: StepKeys<'_, B>) -> Result<Vec<Option<KeyBlock<B>>>> {
        let (pending, incoming) = match step {
            StepKeys::Own(blocks) => return Ok(blocks),
            StepKeys::Incoming(pending, incoming) => (pending, incoming),
        };
        let received = pending.finish()?;
        let [batch, _, _, head_dim] = self.shape.dims();
        let mut parts = self.unpack(received.as_ref(), &incoming, batch, head_dim);
        Ok(self
            .groups()
            .zip(incoming)
            .zip(parts.iter_mut())
            .map(|((g, rows), part)| {
                let (k, v) = part.take()?;
                (!g.shared.is_empty()).then_some((rows, k, v))
            })
            .collect())
    }
}

impl<B: Backend> ShardedAttention<B> {
    /// Cuts a received flat transfer into each group's two blocks (keys and values, or their
    /// gradients) `[batch, rows, group heads, head_dim]`, in group order; `None` for a group
    /// with no rows.
    fn unpack(
        &self,
        received: Option<&Tensor<B, 1>>,
        rows: &[Vec<Row>],
        batch: usize,
        head_dim: usize,
    ) -> Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>> {
        let mut at = 0;
        self.groups()
            .zip(rows)
            .map(|(g, rows)| {
                let dims = [batch, rows.len(), g.heads.len(), head_dim];
                let size: usize = dims.iter().product();
                if size == 0 {
                    return None;
                }
                let flat = received.expect("a non-empty transfer was received");
                let first = flat.clone().narrow(0, at, size).reshape(dims);
                let second = flat.clone().narrow(0, at + size, size).reshape(dims);
                at += 2 * size;
                Some((first, second))
            })
            .collect()
    }
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn five<B: Backend>(t: Tensor<B, 4>, segments: usize) -> Tensor<B, 5> {
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
        let mut next = Some(self.start_keys(0, &k_in, &v_in)?);
        for t in 0..world {
            let step = match next.take() {
                Some(step) => step,
                None => self.start_keys(t, &k_in, &v_in)?,
            };
            let blocks = self.finish_keys(step)?;
            if self.overlap && t + 1 < world {
                next = Some(self.start_keys(t + 1, &k_in, &v_in)?);
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
        [query, key, value]: [FloatTensor<B>; 3],
        output: FloatTensor<B>,
        lse: FloatTensor<B>,
        grad_output: Option<FloatTensor<B>>,
        grad_lse: Option<FloatTensor<B>>,
    ) -> Result<[FloatTensor<B>; 3]> {
        let (q_in, k_in, v_in): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) =
            (float(query), float(key), float(value));
        let dtype = q_in.dtype();
        let out_in: Tensor<B, 4> = float(output);
        let d_out_in: Tensor<B, 4> = grad_output
            .map(float)
            .unwrap_or_else(|| out_in.zeros_like());
        let lse: Tensor<B, 3> = wide(float(lse));
        let d_lse: Option<Tensor<B, 3>> = grad_lse.map(|g| wide(float::<B, 3>(g)));
        // the Burn-ops blocks' delta = rowsum(dO * O) - dLSE, made on first use (the fused kernels
        // make their own, so with kernels it is never built)
        let delta_cell: OnceCell<Tensor<B, 3>> = OnceCell::new();
        let delta = || {
            delta_cell.get_or_init(|| {
                let delta = (wide(d_out_in.clone()) * wide(out_in.clone()))
                    .sum_dim(3)
                    .squeeze_dim::<3>(3);
                match &d_lse {
                    Some(d_lse) => delta - d_lse.clone(),
                    None => delta,
                }
            })
        };
        let [batch, seq, _, head_dim] = self.shape.dims();
        let scale = self.scale();
        let call = self.fused_call(dtype);
        let keep = self.keep_masks()?;
        let groups: Vec<&GroupShard> = self.groups().collect();
        let (me, world) = (self.plan.rank, self.communicator.world_size());
        let causal = self.config.causal;

        // per group: gradients of its owned batches' rows; run pair by pair after the steps
        // (below), so that only one pair's owned gradients are held at a time
        let owned_backward = |g: &GroupShard| -> Result<[Vec<Tensor<B, 4>>; 3]> {
            let mut parts: [Vec<Tensor<B, 4>>; 3] = Default::default();
            for rows in &g.owned {
                let pick = |t: &Tensor<B, 4>| self.gather(t, &g.heads, &rows.locals);
                let pick3 = |t: &Tensor<B, 3>| self.gather(t, &g.heads, &rows.locals);
                let key_keep = keep.as_ref().map(|(_, local)| {
                    local
                        .clone()
                        .select(1, self.index(rows.locals.iter().copied()))
                });
                let (q, k, v) = (pick(&q_in), pick(&k_in), pick(&v_in));
                let (row_out, row_grad_out, row_lse) =
                    (pick(&out_in), pick(&d_out_in), pick3(&lse));
                let row_grad_lse = d_lse.as_ref().map(&pick3);
                let fused = fused_segments_backward(
                    &BlockBackward {
                        query: &q,
                        key: &k,
                        value: &v,
                        output: &row_out,
                        lse: &row_lse,
                        grad_output: &row_grad_out,
                        grad_lse: row_grad_lse.as_ref(),
                        key_keep: key_keep.as_ref(),
                    },
                    rows.rows,
                    causal,
                    &call,
                )?;
                let got = match fused {
                    Some(got) => got,
                    None => {
                        let segments = |t: Tensor<B, 4>| five(wide(t), rows.segments);
                        let segments3 = |t: Tensor<B, 3>| {
                            let [b, m, h] = t.dims();
                            t.reshape([b, rows.segments, m / rows.segments, h])
                        };
                        let visible = self.owned_visibility(rows.segments, rows.rows, key_keep);
                        let block = BlockGrads {
                            grad_output: segments(row_grad_out),
                            lse: segments3(row_lse),
                            delta: segments3(pick3(delta())),
                        };
                        let dims = [batch, rows.locals.len(), g.heads.len(), head_dim];
                        block_backward(
                            segments(q),
                            segments(k),
                            segments(v),
                            block,
                            &visible,
                            scale,
                        )
                        .map(|grad| grad.reshape(dims))
                    }
                };
                for (acc, grad) in parts.iter_mut().zip(got) {
                    acc.push(grad);
                }
            }
            Ok(parts)
        };

        let shared_locals: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.shared.iter().map(|r| r.local).collect())
            .collect();
        let shared_in =
            |t: &Tensor<B, 4>, i: usize| self.gather(t, &groups[i].heads, &shared_locals[i]);
        let shared_stat =
            |t: &Tensor<B, 3>, i: usize| self.gather(t, &groups[i].heads, &shared_locals[i]);
        // each group's shared query rows, their final output, LSE and gradients: gathered once
        // for every step (in the inputs' dtype, as the fused pieces take them; LSEs in f32)
        let shared_rows: Vec<Option<SharedRows<B>>> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                (!g.shared.is_empty()).then(|| SharedRows {
                    query: shared_in(&q_in, i),
                    output: shared_in(&out_in, i),
                    grad_output: shared_in(&d_out_in, i),
                    lse: shared_stat(&lse, i),
                    grad_lse: d_lse.as_ref().map(|d| shared_stat(d, i)),
                })
            })
            .collect();
        let mut d_shared: Vec<Option<[Tensor<B, 4>; 3]>> = groups
            .iter()
            .map(|g| {
                (!g.shared.is_empty()).then(|| {
                    let dims = [batch, g.shared.len(), g.heads.len(), head_dim];
                    let zeros = Tensor::<B, 4>::zeros(dims, (&self.device(), DType::F32));
                    [zeros.clone(), zeros.clone(), zeros]
                })
            })
            .collect();
        // where each sent key row sits among a group's shared rows
        let slots = |i: usize, rows: &[Row]| {
            let shared = &groups[i].shared;
            self.index(rows.iter().map(|r| {
                shared
                    .binary_search_by_key(&r.local, |s| s.local)
                    .expect("a sent key is a shared row")
            }))
        };
        for t in 0..world {
            let blocks = self.keys_for_step(t, &k_in, &v_in)?;
            let mut returned = Vec::new();
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
                let shared = shared_rows[i]
                    .as_ref()
                    .expect("a group with a block has shared rows");
                let block_rows = BlockRows::of(g, &rows, causal);
                let fused = fused_block_backward(
                    &BlockBackward {
                        query: &shared.query,
                        key: &kb,
                        value: &vb,
                        output: &shared.output,
                        lse: &shared.lse,
                        grad_output: &shared.grad_output,
                        grad_lse: shared.grad_lse.as_ref(),
                        key_keep: key_keep.as_ref(),
                    },
                    &block_rows,
                    &call,
                )?;
                let [dq, dk, dv] = match fused {
                    Some(grads) => grads,
                    None => {
                        let visible =
                            self.shared_visibility(g.segment_length, &g.shared, &rows, key_keep);
                        let block = BlockGrads {
                            grad_output: wide(shared.grad_output.clone()).unsqueeze_dim(1),
                            lse: shared.lse.clone().unsqueeze_dim(1),
                            delta: shared_stat(delta(), i).unsqueeze_dim(1),
                        };
                        block_backward(
                            wide(shared.query.clone()).unsqueeze_dim(1),
                            wide(kb).unsqueeze_dim(1),
                            wide(vb).unsqueeze_dim(1),
                            block,
                            &visible,
                            scale,
                        )
                        .map(|x| x.squeeze_dim::<4>(1))
                    }
                };
                let acc = d_shared[i]
                    .as_mut()
                    .expect("a group with a block has shared rows");
                acc[0] = acc[0].clone() + dq;
                if t == 0 {
                    let slot = slots(i, &rows);
                    acc[1] =
                        acc[1]
                            .clone()
                            .select_assign(1, slot.clone(), dk, IndexingUpdateOp::Add);
                    acc[2] = acc[2]
                        .clone()
                        .select_assign(1, slot, dv, IndexingUpdateOp::Add);
                } else {
                    for grad in [dk, dv] {
                        let numel = grad.shape().num_elements();
                        returned.push(grad.reshape([numel]));
                    }
                }
            }
            if t == 0 {
                continue;
            }
            // key gradients go back to their owner; ours come back from the rank we sent keys to
            let (dst, src) = ((me + t) % world, (me + world - t) % world);
            let ours: Vec<Vec<Row>> = groups
                .iter()
                .map(|g| g.keys_sent(me, dst, causal))
                .collect();
            let sizes: Vec<usize> = groups
                .iter()
                .zip(&ours)
                .map(|(g, rows)| batch * rows.len() * g.heads.len() * head_dim)
                .collect();
            let total: usize = sizes.iter().sum::<usize>() * 2;
            let send = (!returned.is_empty()).then(|| (src, Tensor::cat(returned, 0)));
            let received = self.communicator.exchange(
                send,
                (total > 0).then_some(Receive {
                    from: dst,
                    len: total,
                    dtype: DType::F32, // key/value gradients travel in f32
                }),
            )?;
            let parts = self.unpack(received.as_ref(), &ours, batch, head_dim);
            for (i, (rows, part)) in ours.iter().zip(parts).enumerate() {
                let Some((dk, dv)) = part else { continue };
                let slot = slots(i, rows);
                let acc = d_shared[i].as_mut().expect("a sent key is a shared row");
                acc[1] = acc[1]
                    .clone()
                    .select_assign(1, slot.clone(), dk, IndexingUpdateOp::Add);
                acc[2] = acc[2]
                    .clone()
                    .select_assign(1, slot, dv, IndexingUpdateOp::Add);
            }
        }

        // rows back in place, groups into pairs, pairs summed (LongNet) or side by side
        let mut results = PairResults::new(self.config.mode);
        let mut i = 0;
        for (pair, pair_groups) in &self.plan.pairs {
            let mut full: [Vec<Tensor<B, 4>>; 3] = Default::default();
            for g in pair_groups {
                let mut parts = owned_backward(g)?;
                if let Some(shared) = d_shared[i].take() {
                    for (acc, grad) in parts.iter_mut().zip(shared) {
                        acc.push(grad);
                    }
                }
                let locals = g.all_locals();
                let dims = [batch, seq, g.heads.len(), head_dim];
                for (out, rows) in full.iter_mut().zip(parts) {
                    let rows = (!rows.is_empty()).then(|| Tensor::cat(rows, 1));
                    out.push(self.scatter(rows, &locals, dims, 0.0));
                }
                i += 1;
            }
            results.push(
                full.map(|groups| self.pair_heads(pair, groups)),
                |[q, k, v], [dq, dk, dv]| [q + dq, k + dk, v + dv],
            );
        }
        let [dq, dk, dv] = results.finish(|pairs| {
            let mut per_gradient: [Vec<Tensor<B, 4>>; 3] = Default::default();
            for grads in pairs {
                for (acc, grad) in per_gradient.iter_mut().zip(grads) {
                    acc.push(grad);
                }
            }
            per_gradient.map(|parts| Tensor::cat(parts, 2))
        });
        Ok([dq, dk, dv].map(|t| narrow_to(t, dtype).into_primitive().tensor()))
    }
}
