//! Softmax attention of a block of query rows over a block of key rows under a visibility
//! mask, forward (output and log-sum-exp) and backward (FlashAttention-2's recomputation from
//! the final log-sum-exp), on plain Burn tensor ops of the untracked backend.
//!
//! These are the steps of the sharded algorithm: a block is one batch of whole segments a rank
//! owns, or a rank's shared rows against the keys one peer sent. Blocks are cut along the query
//! rows so that one chunk of scores stays under
//! [`SCORE_BUDGET_ELEMENTS`](dilated_attention_core::SCORE_BUDGET_ELEMENTS).

use core::ops::Range;

use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};
use dilated_attention_core::SCORE_BUDGET_ELEMENTS;

/// The block math runs in f32 whatever the inputs' dtype (softmax statistics in half precision
/// would lose the accuracy the merge needs); transfers of keys and values keep the inputs' dtype.
pub(crate) fn wide<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    narrow_to(t, DType::F32)
}

/// `t` in `dtype` (a no-op when it already is).
pub(crate) fn narrow_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

/// Which keys each query sees, for a chunk of query rows:
/// `[1 or batch, 1 or segments, rows, keys]`,
/// 1 = visible; `None` = every key.
pub(crate) type Visibility<'a, B> = &'a dyn Fn(Range<usize>) -> Option<Tensor<B, 4>>;

/// Query-row chunks of a block whose scores `[batch, segments, heads, chunk, keys]` stay under
/// the budget.
fn chunks(dims: [usize; 5], keys: usize) -> impl Iterator<Item = Range<usize>> {
    let [batch, segments, rows, heads, _] = dims;
    let per_row = (batch * segments * heads * keys).max(1);
    let step = (SCORE_BUDGET_ELEMENTS / per_row).clamp(1, rows.max(1));
    (0..rows)
        .step_by(step)
        .map(move |s| s..(s + step).min(rows))
}

/// Scores `[batch, segments, heads, rows, keys]` and the hidden mask at their shape.
fn scores<B: Backend>(
    query: Tensor<B, 5>,
    key: &Tensor<B, 5>,
    visible: Option<Tensor<B, 4>>,
    scale: f64,
) -> (Tensor<B, 5>, Option<Tensor<B, 5, burn::tensor::Bool>>) {
    let [batch, segments, rows, heads, _] = query.dims();
    let keys = key.dims()[2];
    let q = query.swap_dims(2, 3) * scale;
    let k = key.clone().swap_dims(2, 3);
    let scores = q.matmul(k.swap_dims(3, 4));
    // Masks stay 0/1 floats until they have the scores' shape (burn 0.21's WGPU backend
    // mis-handles reshaped boolean masks; see docs/architecture.md).
    let hidden = visible.map(|v| {
        let [lead, groups, _, _] = v.dims();
        v.reshape([lead, groups, 1, rows, keys])
            .expand([batch, segments, heads, rows, keys])
            .lower_elem(0.5)
    });
    (scores, hidden)
}

/// Output `[batch, segments, rows, heads, head_dim]` and log-sum-exp
/// `[batch, segments, rows, heads]` (`-inf`, output 0, for a query that sees no key).
pub(crate) fn block_forward<B: Backend>(
    query: Tensor<B, 5>,
    key: Tensor<B, 5>,
    value: Tensor<B, 5>,
    visible: Visibility<'_, B>,
    scale: f64,
) -> (Tensor<B, 5>, Tensor<B, 4>) {
    let keys = key.dims()[2];
    let v = value.swap_dims(2, 3);
    let (outs, lses): (Vec<_>, Vec<_>) = chunks(query.dims(), keys)
        .map(|rows| {
            let q = query.clone().narrow(2, rows.start, rows.len());
            let (mut s, hidden) = scores(q, &key, visible(rows), scale);
            if let Some(hidden) = hidden {
                s = s.mask_fill(hidden, f32::NEG_INFINITY);
            }
            // detached before the max: no tracked argmax (see `merge_by_lse`)
            let max = s.clone().detach().max_dim(4);
            let max = max
                .clone()
                .mask_fill(max.equal_elem(f32::NEG_INFINITY), 0.0);
            let w = (s - max.clone()).exp();
            let denom = w.clone().sum_dim(4);
            let empty = denom.clone().equal_elem(0.0);
            let denom = denom.mask_fill(empty.clone(), 1.0);
            let lse = (max + denom.clone().log()).mask_fill(empty, f32::NEG_INFINITY);
            let out = (w / denom).matmul(v.clone()).swap_dims(2, 3);
            let [b, g, h, m, _] = lse.dims();
            (out, lse.reshape([b, g, h, m]).swap_dims(2, 3))
        })
        .unzip();
    (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
}

/// What [`block_backward`] needs besides the inputs: the output's gradient, the final
/// log-sum-exp and `delta = rowsum(grad_output * output) - grad_lse`, all per query row.
pub(crate) struct BlockGrads<B: Backend> {
    /// `[batch, segments, rows, heads, head_dim]`.
    pub grad_output: Tensor<B, 5>,
    /// `[batch, segments, rows, heads]`.
    pub lse: Tensor<B, 4>,
    /// `[batch, segments, rows, heads]`.
    pub delta: Tensor<B, 4>,
}

/// Gradients of the block's queries, keys and values (shapes of the inputs), recomputing the
/// weights from the final log-sum-exp: `P = exp(S - lse)`, `dV = P^T dO`,
/// `dS = P (dO V^T - delta)`, `dQ = scale dS K`, `dK = scale dS^T Q`.
pub(crate) fn block_backward<B: Backend>(
    query: Tensor<B, 5>,
    key: Tensor<B, 5>,
    value: Tensor<B, 5>,
    grads: BlockGrads<B>,
    visible: Visibility<'_, B>,
    scale: f64,
) -> [Tensor<B, 5>; 3] {
    let keys = key.dims()[2];
    let k = key.clone().swap_dims(2, 3);
    let v = value.swap_dims(2, 3);
    let mut dq_parts = Vec::new();
    let mut dk: Option<Tensor<B, 5>> = None;
    let mut dv: Option<Tensor<B, 5>> = None;
    for rows in chunks(query.dims(), keys) {
        let part = |t: &Tensor<B, 5>| t.clone().narrow(2, rows.start, rows.len()).swap_dims(2, 3);
        let q = part(&query);
        let d_out = part(&grads.grad_output);
        let row_stat = |t: &Tensor<B, 4>| {
            let t = t.clone().narrow(2, rows.start, rows.len()).swap_dims(2, 3);
            let [b, g, h, m] = t.dims();
            t.reshape([b, g, h, m, 1])
        };
        let lse = row_stat(&grads.lse);
        let lse = lse
            .clone()
            .mask_fill(lse.equal_elem(f32::NEG_INFINITY), 0.0);
        let delta = row_stat(&grads.delta);
        let (s, hidden) = scores(q.clone().swap_dims(2, 3), &key, visible(rows), scale);
        let mut p = (s - lse).exp();
        if let Some(hidden) = hidden {
            p = p.mask_fill(hidden, 0.0);
        }
        let dv_part = p.clone().swap_dims(3, 4).matmul(d_out.clone());
        let dp = d_out.matmul(v.clone().swap_dims(3, 4));
        let ds = p * (dp - delta);
        dq_parts.push(ds.clone().matmul(k.clone()) * scale);
        let dk_part = ds.swap_dims(3, 4).matmul(q) * scale;
        dk = Some(dk.map_or(dk_part.clone(), |acc| acc + dk_part));
        dv = Some(dv.map_or(dv_part.clone(), |acc| acc + dv_part));
    }
    let back = |t: Tensor<B, 5>| t.swap_dims(2, 3);
    [
        back(Tensor::cat(dq_parts, 3)),
        back(dk.expect("a block has at least one query row")),
        back(dv.expect("a block has at least one query row")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tolerance};
    use dilated_attention_core::segment_attention;

    type B = NdArray;

    fn normal<const D: usize>(dims: [usize; D]) -> Tensor<B, D> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn causal(rows: Range<usize>, keys: usize) -> Option<Tensor<B, 4>> {
        let data: Vec<f32> = rows
            .clone()
            .flat_map(|q| (0..keys).map(move |k| f32::from(u8::from(k <= q))))
            .collect();
        Some(
            Tensor::<B, 1>::from_floats(data.as_slice(), &Default::default()).reshape([
                1,
                1,
                rows.len(),
                keys,
            ]),
        )
    }

    #[test]
    fn forward_equals_core_segment_attention() {
        let dims = [2, 3, 7, 2, 5];
        let (q, k, v) = (normal(dims), normal(dims), normal(dims));
        let (want_o, want_l) =
            segment_attention(q.clone(), k.clone(), v.clone(), None, true, 0.4, 0.0);
        let (o, l) = block_forward(q, k, v, &|rows| causal(rows, 7), 0.4);
        o.into_data()
            .assert_approx_eq::<f32>(&want_o.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        l.into_data()
            .assert_approx_eq::<f32>(&want_l.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
    }

    #[test]
    fn backward_equals_autodiff_of_the_forward() {
        type A = Autodiff<NdArray>;
        let dims = [2, 2, 6, 3, 4];
        let (q, k, v, w_o, w_l) = (
            normal(dims),
            normal(dims),
            normal(dims),
            normal(dims),
            normal([2, 2, 6, 3]),
        );
        let track = |t: &Tensor<B, 5>| Tensor::<A, 5>::from_inner(t.clone()).require_grad();
        let (qa, ka, va) = (track(&q), track(&k), track(&v));
        let visible = |rows: Range<usize>| causal(rows, 6).map(Tensor::<A, 4>::from_inner);
        let (o, l) = block_forward(qa.clone(), ka.clone(), va.clone(), &visible, 0.5);
        let loss = (o.clone() * Tensor::from_inner(w_o.clone())).sum()
            + (l.clone() * Tensor::from_inner(w_l.clone())).sum();
        let grads = loss.backward();

        let (o, l) = (o.inner(), l.inner());
        let delta = (w_o.clone() * o).sum_dim(4).squeeze_dim::<4>(4) - w_l;
        let got = block_backward(
            q,
            k,
            v,
            BlockGrads {
                grad_output: w_o,
                lse: l,
                delta,
            },
            &|rows| causal(rows, 6),
            0.5,
        );
        for (got, want) in got
            .into_iter()
            .zip([qa, ka, va].map(|t| t.grad(&grads).unwrap()))
        {
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(1e-4, 1e-5));
        }
    }
}
