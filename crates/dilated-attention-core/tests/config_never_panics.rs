//! Every config, good or bad, gives `Ok` or a typed error naming the field; none panics, and a
//! valid one always resolves to an index plan whose rows lie inside the sequence.

use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, DilatedIndexPlan, DilationMode,
};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1usize..=64, Just(usize::MAX / 4)]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-1.0),
        Just(1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        0.0f64..1.5
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn validate_and_plan_never_panic(
        segments in prop::collection::vec(value(), 0..4),
        rates in prop::collection::vec(value(), 0..4),
        grouped in any::<bool>(),
        scale in prop::option::of(float()),
        dropout in float(),
        seq in 0usize..50,
        heads in 0usize..5,
    ) {
        let cfg = DilatedAttentionConfig::new(segments.clone(), rates.clone())
            .with_mode(if grouped { DilationMode::HeadGrouped } else { DilationMode::LongNet })
            .with_scale(scale)
            .with_dropout(dropout);
        match cfg.validate() {
            Ok(()) => {
                prop_assert!(!segments.is_empty() && segments.len() == rates.len());
                prop_assert!(segments.iter().chain(&rates).all(|&v| v > 0));
                match DilatedIndexPlan::new(&cfg, seq, heads) {
                    Ok(plan) => {
                        for pair in plan.pairs() {
                            for group in &pair.groups {
                                prop_assert!(group.rows.positions().all(|p| p < seq));
                                prop_assert!(group.heads.iter().all(|&h| h < heads));
                            }
                        }
                    }
                    Err(e) => {
                        let expected = matches!(
                            e,
                            DilatedAttentionError::ZeroSize { .. }
                                | DilatedAttentionError::TooFewHeads { .. }
                        );
                        prop_assert!(expected, "unexpected plan error {e}");
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                let names_a_field = ["segment_lengths", "dilation_rates", "scale", "dropout"]
                    .iter()
                    .any(|f| message.contains(f));
                prop_assert!(names_a_field, "{message}");
            }
        }
    }
}
