//! Hilbert-ordered attention equals "permute along the curve, dilated attention on the reference
//! path, permute back", with the permutation applied on the host (not by the module's gathers),
//! for random 2-D grids, 3-D volumes, point clouds and plain sequences, shapes and configs, both
//! modes, causal, padding.

use burn::backend::NdArray;
use burn::tensor::{Bool, Tensor, TensorData};
use dilated_attention_core::compare::max_scaled_error;
use dilated_attention_core::oracle::{OracleCase, arbitrary_case};
use dilated_attention_core::{DilatedAttentionError, reference_dilated_attention};
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

/// Largest `|a - b| / (1 + |b|)`: infinite (failing every bound) on NaN or a misplaced
/// infinity.
fn max_diff(a: Vec<f32>, b: Vec<f32>) -> f64 {
    max_scaled_error(&a, &b)
}

/// How the tokens are laid out.
#[derive(Debug, Clone)]
enum Layout {
    Sequence,
    Grid(usize, usize),
    Volume(usize, usize, usize),
    Points(Vec<[f32; 3]>, usize),
}

impl Layout {
    fn order(&self, seq: usize) -> HilbertOrder {
        match self {
            Layout::Sequence => HilbertOrder::sequence(seq).unwrap(),
            Layout::Grid(w, h) => HilbertOrder::grid(*w, *h).unwrap(),
            Layout::Volume(w, h, d) => HilbertOrder::volume(*w, *h, *d).unwrap(),
            Layout::Points(points, side) => HilbertOrder::points_3d(points, *side).unwrap(),
        }
    }
}

fn case_with_layout() -> impl Strategy<Value = (OracleCase, Layout)> {
    (
        arbitrary_case(vec![4, 8]),
        (1usize..=6, 1usize..=6, 1usize..=5),
        0u8..4,
        prop::collection::vec(prop::array::uniform3(-10.0f32..10.0), 6 * 6 * 5),
        1usize..=16,
    )
        .prop_map(|(mut case, (w, h, d), kind, cloud, side)| {
            let layout = match kind {
                0 => Layout::Sequence,
                1 => Layout::Grid(w, h * d),
                2 => Layout::Volume(w, h, d),
                _ => Layout::Points(cloud[..w * h * d].to_vec(), side),
            };
            case.shape[1] = w * h * d;
            (case, layout)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn hilbert_attention_is_permuted_reference_attention((case, layout) in case_with_layout()) {
        let device = Default::default();
        let [batch, seq, heads, dim] = case.shape;
        let order = layout.order(seq);
        let [q, k, v] = case.inputs::<B>(&device);
        let mask = case.padding_mask::<B>(&device);

        let mut config = HilbertDilatedAttentionConfig::new(case.config());
        match &layout {
            Layout::Grid(w, h) => config = config.with_grid(Some([*w, *h])),
            Layout::Volume(w, h, d) => config = config.with_volume(Some([*w, *h, *d])),
            Layout::Sequence | Layout::Points(..) => {}
        }
        let attn = config.init::<B>(&device);
        let result = match &layout {
            Layout::Points(..) => attn.try_forward_with_order(q.clone(), k.clone(), v.clone(), mask.clone(), &order),
            _ => attn.try_forward_with_lse(q.clone(), k.clone(), v.clone(), mask.clone()),
        };
        if !case.valid() {
            // HeadGrouped with fewer heads than pairs: the typed error, not a result.
            let rejected = matches!(result, Err(DilatedAttentionError::TooFewHeads { .. }));
            prop_assert!(rejected, "{case:?}: {:?}", result.err());
            println!("invalid case rejected with TooFewHeads: {case:?}");
            return Ok(());
        }
        let (out, lse) = result.unwrap();

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
        // The inverse by its definition (not the library's): where each token sits in the order.
        let mut inverse = vec![usize::MAX; seq];
        for (i, &token) in order.order().iter().enumerate() {
            inverse[token] = i;
        }
        prop_assert!(inverse.iter().all(|&i| i < seq), "the order is a permutation");
        let want_out = reorder(&host(&want_out), batch, seq, row, &inverse);
        let want_lse = reorder(&want_lse.to_data().to_vec::<f32>().unwrap(), batch, seq, heads, &inverse);
        let e_out = max_diff(out.to_data().to_vec::<f32>().unwrap(), want_out);
        let e_lse = max_diff(lse.to_data().to_vec::<f32>().unwrap(), want_lse);
        prop_assert!(e_out < 1e-5 && e_lse < 1e-5, "{case:?} {layout:?}: out {e_out} lse {e_lse}");
    }
}
