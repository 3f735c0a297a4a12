//! The reference path against the dense test oracle, on random shapes and configs:
//! outputs, log-sum-exps, and gradients of q, k, v under `Autodiff<NdArray>`.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Bool, Tensor, TensorData};
use dilated_attention_core::compare::{check_close, check_lse_close};
use dilated_attention_core::oracle::{
    OracleCase, arbitrary_case, oracle_dilated_attention, seeded_normal, seeded_padding,
};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, DilationMode, reference_dilated_attention,
};
use proptest::prelude::*;

type B = NdArray;
type AD = Autodiff<NdArray>;

fn case() -> impl Strategy<Value = OracleCase> {
    arbitrary_case(vec![8, 16, 32, 64])
}

/// f32 tolerance of the issue: 1e-5 relative, with an absolute floor for values near 0.
const TOL: (f64, f64) = (1e-5, 1e-5);

/// The values of a tensor as `f32`.
fn values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().to_vec::<f32>().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn reference_output_and_lse_match_dense_oracle(c in case()) {
        let device = Default::default();
        let [q, k, v] = c.inputs::<B>(&device);
        let cfg = c.config();
        let got = reference_dilated_attention(q.clone(), k.clone(), v.clone(), c.padding_mask::<B>(&device), &cfg);
        if !c.valid() {
            let is_too_few_heads = matches!(got, Err(DilatedAttentionError::TooFewHeads { .. }));
            prop_assert!(is_too_few_heads);
            println!("invalid case rejected with TooFewHeads: {c:?}");
            return Ok(());
        }
        let (out, lse) = got.unwrap();
        let (want_out, want_lse) = oracle_dilated_attention(q, k, v, c.padding_mask::<B>(&device), &cfg);
        let out = out.into_data();
        prop_assert!(out.to_vec::<f32>().unwrap().iter().all(|x| x.is_finite()));
        let out_check = check_close(&values(out), &values(want_out.into_data()), TOL.0, TOL.1);
        prop_assert!(out_check.is_ok(), "output: {:?}", out_check);
        let lse_check = check_lse_close(&values(lse.into_data()), &values(want_lse.into_data()), TOL.0, TOL.1);
        prop_assert!(lse_check.is_ok(), "LSE: {:?}", lse_check);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn reference_gradients_match_dense_oracle(c in case()) {
        let device = Default::default();
        if !c.valid() {
            let [q, k, v] = c.inputs::<AD>(&device);
            let got = reference_dilated_attention(q, k, v, None, &c.config());
            let is_too_few_heads = matches!(got, Err(DilatedAttentionError::TooFewHeads { .. }));
            prop_assert!(is_too_few_heads);
            println!("invalid case rejected with TooFewHeads: {c:?}");
            return Ok(());
        }
        let run = |oracle: bool| {
            let [q, k, v] = c.inputs::<AD>(&device).map(|t| t.require_grad());
            let cfg = c.config();
            let m = c.padding_mask::<AD>(&device);
            let (out, lse) = if oracle {
                oracle_dilated_attention(q.clone(), k.clone(), v.clone(), m, &cfg)
            } else {
                reference_dilated_attention(q.clone(), k.clone(), v.clone(), m, &cfg).unwrap()
            };
            // A random linear function of the output and of the finite log-sum-exps.
            let w_out = seeded_normal::<AD, 4>(c.seed.wrapping_add(3), c.shape, &device);
            let w_lse = seeded_normal::<AD, 3>(c.seed.wrapping_add(4), [c.shape[0], c.shape[1], c.shape[2]], &device);
            let lse = lse.clone().mask_fill(lse.equal_elem(f32::NEG_INFINITY), 0.0);
            let loss = (out * w_out).sum() + (lse * w_lse).sum();
            let grads = loss.backward();
            [q, k, v].map(|t| t.grad(&grads).expect("grad").into_data())
        };
        let got = run(false);
        let want = run(true);
        for (g, w) in got.iter().zip(&want) {
            let check = check_close(&values(g.clone()), &values(w.clone()), 1e-4, 1e-5);
            prop_assert!(check.is_ok(), "gradient: {:?}", check);
        }
    }
}

#[test]
fn padded_keys_are_hidden_with_and_without_causal() {
    // Regression for the PyTorch library, which validated the padding mask and ignored it.
    let device = Default::default();
    for causal in [false, true] {
        for mode in [DilationMode::LongNet, DilationMode::HeadGrouped] {
            let cfg = DilatedAttentionConfig::new(vec![6, 12], vec![1, 2])
                .with_mode(mode)
                .with_causal(causal);
            let shape = [2, 23, 4, 8];
            let q = seeded_normal::<B, 4>(11, shape, &device);
            let k = seeded_normal::<B, 4>(12, shape, &device);
            let v = seeded_normal::<B, 4>(13, shape, &device);
            let pad = seeded_padding::<B>(14, 2, 23, 0.3, &device);
            let (masked, _) = reference_dilated_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(pad.clone()),
                &cfg,
            )
            .unwrap();
            let (unmasked, _) =
                reference_dilated_attention(q.clone(), k.clone(), v.clone(), None, &cfg).unwrap();
            // Changing the padded keys' values must not change the output.
            let noise = seeded_normal::<B, 4>(15, shape, &device) * 100.0;
            let pad4 = pad.reshape([2, 23, 1, 1]).expand(shape);
            let v2 = v.clone().mask_where(pad4.clone(), noise.clone());
            let k2 = k.clone().mask_where(pad4, noise);
            let (masked2, _) = reference_dilated_attention(
                q.clone(),
                k2,
                v2,
                Some(seeded_padding::<B>(14, 2, 23, 0.3, &device)),
                &cfg,
            )
            .unwrap();
            let check = check_close(
                &values(masked2.into_data()),
                &values(masked.clone().into_data()),
                1e-5,
                1e-6,
            );
            assert!(check.is_ok(), "padded keys changed the output: {check:?}");
            // And the mask does something.
            let diff = (masked - unmasked).abs().max().into_scalar();
            assert!(
                diff > 1e-3,
                "mask had no effect (causal {causal}, {mode:?})"
            );
        }
    }
}

#[test]
fn fully_padded_batch_row_outputs_zero_without_nan() {
    let device = Default::default();
    let cfg = DilatedAttentionConfig::new(vec![5, 10], vec![1, 3]).with_causal(true);
    let shape = [2, 17, 3, 16];
    let q = seeded_normal::<B, 4>(21, shape, &device);
    let mut pad = vec![false; 2 * 17];
    pad[..17].iter_mut().for_each(|p| *p = true); // batch 0: every key padded
    let pad = Tensor::<B, 2, Bool>::from_data(TensorData::new(pad, [2, 17]), &device);
    let (out, lse) = reference_dilated_attention(q.clone(), q.clone(), q, Some(pad), &cfg).unwrap();
    let out = out.into_data().to_vec::<f32>().unwrap();
    assert!(out.iter().all(|x| x.is_finite()));
    assert!(out[..17 * 3 * 16].iter().all(|&x| x == 0.0));
    assert!(out[17 * 3 * 16..].iter().any(|&x| x != 0.0));
    let lse = lse.into_data().to_vec::<f32>().unwrap();
    assert!(lse[..17 * 3].iter().all(|&x| x == f32::NEG_INFINITY));
    assert!(lse[17 * 3..].iter().all(|x| x.is_finite()));
}

#[test]
fn shape_errors_are_values() {
    let device = Default::default();
    let cfg = DilatedAttentionConfig::new(vec![4], vec![1]);
    let q = seeded_normal::<B, 4>(1, [1, 8, 2, 4], &device);
    let k = seeded_normal::<B, 4>(2, [1, 9, 2, 4], &device);
    let err = reference_dilated_attention(q.clone(), k, q.clone(), None, &cfg).unwrap_err();
    assert!(matches!(
        err,
        DilatedAttentionError::ShapeMismatch { name: "key", .. }
    ));
    let pad = seeded_padding::<B>(3, 1, 7, 0.5, &device);
    let err = reference_dilated_attention(q.clone(), q.clone(), q, Some(pad), &cfg).unwrap_err();
    assert_eq!(
        err,
        DilatedAttentionError::MaskShapeMismatch {
            expected: [1, 8],
            actual: [1, 7]
        }
    );
}
