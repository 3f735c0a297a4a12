//! The key/value rows a rank exchanges in each step of the sharded attention: what it sends to
//! rank `r + t`, what it receives from rank `r - t`, and the cutting of a received transfer into
//! each group's blocks.

use burn::tensor::{Tensor, backend::Backend};
use dilated_attention_core::Result;

use crate::shard_plan::Row;
use crate::sharded_attention::ShardedAttention;
use crate::{PendingExchange, Receive};

/// Step `t`'s key/value rows, as [`ShardedAttention::start_keys`] leaves them.
pub(crate) enum StepKeys<'a, B: Backend> {
    /// Step 0: this rank's own shared rows.
    Own(Vec<Option<KeyBlock<B>>>),
    /// A transfer from rank `r - t` in flight, and the rows it brings for each group.
    Incoming(Box<dyn PendingExchange<B> + 'a>, Vec<Vec<Row>>),
}

/// Keys one group received in one step: their rows and `[batch, rows, heads, head_dim]` blocks, in
/// the inputs' dtype (the Burn-ops blocks widen them to f32; the fused pieces take them as they are).
pub(crate) type KeyBlock<B> = (Vec<Row>, Tensor<B, 4>, Tensor<B, 4>);

impl<B: Backend> ShardedAttention<B> {
    /// The key/value rows of every group for step `t` (0: this rank's own shared rows): sends
    /// what rank `r + t` needs, receives from `r - t`.
    pub(crate) fn keys_for_step(
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
    pub(crate) fn start_keys(
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
    pub(crate) fn finish_keys(&self, step: StepKeys<'_, B>) -> Result<Vec<Option<KeyBlock<B>>>> {
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
    pub(crate) fn unpack(
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
