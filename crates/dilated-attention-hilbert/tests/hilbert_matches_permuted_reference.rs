//! Hilbert-ordered attention equals "permute along the curve, dilated attention on the reference
//! path, permute back", with the permutation applied on the host (not by the module's gathers),
//! for random grids, shapes and configs, both modes, causal, padding.

use burn::backend::NdArray;
use burn::tensor::{Bool, Tensor, TensorData};
use dilated_attention_core::oracle::{OracleCase, arbitrary_case};
use dilated_attention_core::reference_dilated_attention;
use dilated_attention_hilbert::{HilbertDilatedAttentionConfig, HilbertOrder};
use proptest::prelude::*;

type B = NdArray;

/// Rows of `[batch, seq, rest..]` data reordered on the host: `out[:, i] = data[:, from[i]]`.
fn reorder(data: &[f32], batch: usize, seq: usize, row: usize, from: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for b in 0..batch {
        for &src in from {
            let start = (b * seq + src) * row;
            out.extend_from_slice(&data[start..start + row]);
        }
    }
    out
}

fn max_diff(a: Vec<f32>, b: Vec<f32>) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

fn case_with_grid() -> impl Strategy<Value = (OracleCase, usize, usize, bool)> {
    (
        arbitrary_case(vec![4, 8]),
        1usize..=12,
        1usize..=12,
        any::<bool>(),
    )
        .prop_map(|(mut case, w, h, use_grid)| {
            case.shape[1] = w * h;
            (case, w, h, use_grid)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn hilbert_attention_is_permuted_reference_attention((case, w, h, use_grid) in case_with_grid()) {
        prop_assume!(case.valid());
        let device = Default::default();
        let [batch, seq, heads, dim] = case.shape;
        let order = if use_grid { HilbertOrder::grid(w, h).unwrap() } else { HilbertOrder::sequence(seq).unwrap() };
        let [q, k, v] = case.inputs::<B>(&device);
        let mask = case.padding_mask::<B>(&device);

        let attn = HilbertDilatedAttentionConfig::new(case.config())
            .with_grid(use_grid.then_some([w, h]))
            .init::<B>(&device);
        let (out, lse) = attn.try_forward_with_lse(q.clone(), k.clone(), v.clone(), mask.clone()).unwrap();

        // the same by hand: reorder rows on the host, reference attention, reorder back
        let row = heads * dim;
        let host = |t: &Tensor<B, 4>| t.to_data().to_vec::<f32>().unwrap();
        let along = |t: &Tensor<B, 4>| Tensor::<B, 4>::from_data(
            TensorData::new(reorder(&host(t), batch, seq, row, order.order()), case.shape), &device);
        let mask = mask.map(|m| {
            let bits: Vec<bool> = m.to_data().to_vec::<bool>().unwrap();
            let moved: Vec<bool> = (0..batch).flat_map(|b| order.order().iter().map(move |&t| (b, t)))
                .map(|(b, t)| bits[b * seq + t]).collect();
            Tensor::<B, 2, Bool>::from_data(TensorData::new(moved, [batch, seq]), &device)
        });
        let (want_out, want_lse) = reference_dilated_attention(along(&q), along(&k), along(&v), mask, &case.config()).unwrap();
        let want_out = reorder(&host(&want_out), batch, seq, row, order.inverse());
        let want_lse = reorder(&want_lse.to_data().to_vec::<f32>().unwrap(), batch, seq, heads, order.inverse());
        let e_out = max_diff(out.to_data().to_vec::<f32>().unwrap(), want_out);
        let e_lse = max_diff(lse.to_data().to_vec::<f32>().unwrap(), want_lse);
        prop_assert!(e_out < 1e-5 && e_lse < 1e-5, "{case:?} grid {w}x{h} ({use_grid}): out {e_out} lse {e_lse}");
    }
}
