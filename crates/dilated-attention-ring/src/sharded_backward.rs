//! The backward of the sharded attention (FlashAttention-2 with recomputation from the final
//! log-sum-exp): each step receives the peer's keys again, adds the block's query gradient
//! locally, and sends the key/value gradients of the received rows back to their owner.

use std::cell::OnceCell;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, IndexingUpdateOp, Tensor, backend::Backend};
use dilated_attention_core::{DilatedAttentionError, Result};
use dilated_attention_kernels::DilatedAttentionBackend;

use crate::Receive;
use crate::block::{BlockGrads, block_backward, narrow_to, wide};
use crate::fused_block::{BlockBackward, BlockRows, fused_block_backward, fused_segments_backward};
use crate::pair_results::PairResults;
use crate::shard_plan::{GroupShard, Row};
use crate::sharded_attention::{ShardedAttention, five, float};

/// A group's shared query rows in the backward, with their final output, f32 LSE and gradients
/// `[batch, shared rows, group heads, ..]`.
pub(crate) struct SharedRows<B: Backend> {
    query: Tensor<B, 4>,
    output: Tensor<B, 4>,
    grad_output: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    grad_lse: Option<Tensor<B, 3>>,
}

impl<B: DilatedAttentionBackend> ShardedAttention<B> {
    /// The backward of [`ShardedAttention`] (see its module docs): recomputes each step's
    /// blocks from the final log-sum-exp and returns the key/value gradients of received rows
    /// to their owners.
    pub(crate) fn sharded_backward(
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
            let at_step = |cause| DilatedAttentionError::RingStep {
                rank: me,
                step: t,
                phase: "backward",
                cause: Box::new(cause),
            };
            let blocks = self.keys_for_step(t, &k_in, &v_in).map_err(at_step)?;
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
                )
                .map_err(at_step)?;
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
            let received = self
                .communicator
                .exchange(
                    send,
                    (total > 0).then_some(Receive {
                        from: dst,
                        len: total,
                        dtype: DType::F32, // key/value gradients travel in f32
                    }),
                )
                .map_err(at_step)?;
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
