//! The public API on arbitrary input, as a user's crate calls it: every call of
//! `dilated_attention_with_lse_masked`, the `DilatedAttention` module, every kind of the factory
//! and the ring on two in-process ranks either returns `Ok` with finite output (and finite
//! gradients through `Autodiff`) for finite input, or a typed error. None panics. A call whose
//! inputs are well formed (one dtype, one shape, no empty dimension, a mask of the right shape)
//! and whose config plans for the sequence must be `Ok`.
//!
//! Runs on the backend the crate's feature picks: `cargo test` (ndarray), `cargo test --features
//! wgpu` (WGPU; lavapipe on a CPU-only Linux). `PROPTEST_CASES` sets the number of cases.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dilated_attention::backend::Autodiff;
use dilated_attention::burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use dilated_attention::prelude::*;
use dilated_attention::{AttentionKind, DilatedIndexPlan, create_attention};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[cfg(feature = "cuda")]
type Inner = dilated_attention::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Inner = dilated_attention::backend::Wgpu;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
type Inner = dilated_attention::backend::NdArray;

type B = Autodiff<Inner>;

/// The float dtypes this backend stores: half precision on the GPU backends, `f64` on the CPU.
fn dtypes() -> [DType; 2] {
    if cfg!(any(feature = "wgpu", feature = "cuda")) {
        [DType::F32, DType::F16]
    } else {
        [DType::F32, DType::F64]
    }
}

/// The key padding mask of a call.
#[derive(Debug, Clone)]
enum Mask {
    None,
    /// Each key padded with this probability (every key of a batch row, at 1.0).
    Random(f64),
    /// `[batch, seq + 1]`: the wrong shape.
    WrongShape,
}

/// One call's shapes, dtypes, mask and config.
#[derive(Debug, Clone)]
struct Call {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    /// The key's sequence length, when it differs from the query's.
    key_seq: Option<usize>,
    /// Indices into [`dtypes`] of query, key and value.
    dtypes: [usize; 3],
    mask: Mask,
    segments: Vec<usize>,
    rates: Vec<usize>,
    grouped: bool,
    causal: bool,
    scale: Option<f64>,
    dropout: f64,
    seed: u64,
}

impl Call {
    fn config(&self) -> DilatedAttentionConfig {
        DilatedAttentionConfig::new(self.segments.clone(), self.rates.clone())
            .with_mode(if self.grouped {
                DilationMode::HeadGrouped
            } else {
                DilationMode::LongNet
            })
            .with_causal(self.causal)
            .with_scale(self.scale)
            .with_dropout(self.dropout)
    }

    fn standard_config(&self) -> StandardConfig {
        let attention = self.config();
        let mut standard = StandardConfig::new(
            self.head_dim,
            self.heads,
            self.segments.clone(),
            self.rates.clone(),
        )
        .with_causal(self.causal)
        .with_scale(self.scale)
        .with_dropout(self.dropout);
        standard.mode = attention.mode;
        standard
    }

    /// One dtype, one shape, no empty dimension, a mask of the right shape, and a config that
    /// plans for the sequence and heads: a call that must succeed.
    fn well_formed(&self) -> bool {
        let config = self.config();
        self.batch * self.seq * self.heads * self.head_dim > 0
            && self.dtypes.iter().all(|&d| d == self.dtypes[0])
            && self.key_seq.is_none()
            && !matches!(self.mask, Mask::WrongShape)
            && config.validate().is_ok()
            && DilatedIndexPlan::new(&config, self.seq, self.heads).is_ok()
    }
}

/// One thing wrong with a call.
#[derive(Debug, Clone)]
enum Flaw {
    EmptyDimension(usize),
    KeySequence(usize),
    KeyOrValueDType(usize),
    MaskShape,
    ZeroSegment,
    ZeroRate,
    FewerRates,
    Scale(f64),
    Dropout(f64),
}

/// Calls from valid ranges, half of them with one [`Flaw`].
fn calls() -> impl Strategy<Value = Call> {
    let pairs = (1usize..=3).prop_flat_map(|n| {
        (
            prop::collection::vec(1usize..=48, n),
            prop::collection::vec(1usize..=5, n),
        )
    });
    let mask = prop_oneof![
        2 => Just(Mask::None),
        2 => Just(Mask::Random(0.3)),
        1 => Just(Mask::Random(1.0)),
    ];
    let flaw = prop_oneof![
        (0usize..4).prop_map(Flaw::EmptyDimension),
        (1usize..=40).prop_map(Flaw::KeySequence),
        (1usize..3).prop_map(Flaw::KeyOrValueDType),
        Just(Flaw::MaskShape),
        Just(Flaw::ZeroSegment),
        Just(Flaw::ZeroRate),
        Just(Flaw::FewerRates),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(0.0), Just(-1.0)]
            .prop_map(Flaw::Scale),
        prop_oneof![Just(f64::NAN), Just(1.0), Just(-0.5)].prop_map(Flaw::Dropout),
    ];
    (
        (
            1usize..=2,
            1usize..=40,
            1usize..=4,
            prop_oneof![Just(1usize), Just(3), Just(8), Just(16), Just(24)],
            0usize..2,
            mask,
        ),
        (
            pairs,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![3 => Just(None), 1 => Just(Some(0.3)), 1 => Just(Some(2.0))],
            prop_oneof![4 => Just(0.0), 1 => Just(0.2)],
            any::<u64>(),
            prop::option::of(flaw),
        ),
    )
        .prop_map(
            |(
                (batch, seq, heads, head_dim, dtype, mask),
                ((segments, rates), grouped, causal, scale, dropout, seed, flaw),
            )| {
                let mut call = Call {
                    batch,
                    seq,
                    heads,
                    head_dim,
                    key_seq: None,
                    dtypes: [dtype; 3],
                    mask,
                    segments,
                    rates,
                    grouped,
                    causal,
                    scale,
                    dropout,
                    seed,
                };
                match flaw {
                    None => {}
                    Some(Flaw::EmptyDimension(0)) => call.batch = 0,
                    Some(Flaw::EmptyDimension(1)) => call.seq = 0,
                    Some(Flaw::EmptyDimension(2)) => call.heads = 0,
                    Some(Flaw::EmptyDimension(_)) => call.head_dim = 0,
                    Some(Flaw::KeySequence(n)) => call.key_seq = Some(n).filter(|&n| n != seq),
                    Some(Flaw::KeyOrValueDType(i)) => call.dtypes[i] = 1 - dtype,
                    Some(Flaw::MaskShape) => call.mask = Mask::WrongShape,
                    Some(Flaw::ZeroSegment) => call.segments[0] = 0,
                    Some(Flaw::ZeroRate) => call.rates[0] = 0,
                    Some(Flaw::FewerRates) => {
                        call.rates.pop();
                    }
                    Some(Flaw::Scale(scale)) => call.scale = Some(scale),
                    Some(Flaw::Dropout(dropout)) => call.dropout = dropout,
                }
                call
            },
        )
}

/// The next state of a linear congruential generator (Knuth's MMIX constants).
fn next_random(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state
}

/// Uniform values (seeded) in `dtype`, tracked by `Autodiff`.
fn input<const D: usize>(
    dims: [usize; D],
    dtype: DType,
    seed: u64,
    device: &Device<B>,
) -> Tensor<B, D> {
    let count = dims.iter().product::<usize>();
    let mut state = seed | 1;
    // Spread over about [-2, 2].
    let values: Vec<f32> = (0..count)
        .map(|_| (next_random(&mut state) >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
        .collect();
    Tensor::<B, D>::from_data(TensorData::new(values, dims), (device, dtype)).require_grad()
}

fn mask(call: &Call, device: &Device<B>) -> Option<Tensor<B, 2, Bool>> {
    let keys = call.key_seq.unwrap_or(call.seq);
    let (dims, probability) = match call.mask {
        Mask::None => return None,
        Mask::Random(p) => ([call.batch, keys], p),
        Mask::WrongShape => ([call.batch, keys + 1], 0.3),
    };
    let mut state = call.seed ^ 0x9e37_79b9_7f4a_7c15;
    let padded: Vec<bool> = (0..dims[0] * dims[1])
        .map(|_| ((next_random(&mut state) >> 33) as f64 / (1u64 << 31) as f64) < probability)
        .collect();
    Some(Tensor::from_data(TensorData::new(padded, dims), device))
}

/// Query, key and value of `call` in `[batch, seq, heads, head_dim]`.
fn heads_inputs(call: &Call, device: &Device<B>) -> [Tensor<B, 4>; 3] {
    let keys = call.key_seq.unwrap_or(call.seq);
    let dtype = |i: usize| dtypes()[call.dtypes[i]];
    let dims = |seq| [call.batch, seq, call.heads, call.head_dim];
    [
        input(dims(call.seq), dtype(0), call.seed, device),
        input(dims(keys), dtype(1), call.seed.wrapping_add(1), device),
        input(dims(keys), dtype(2), call.seed.wrapping_add(2), device),
    ]
}

/// Fails unless every value is finite.
fn all_finite(what: &str, data: TensorData) -> Result<(), TestCaseError> {
    let values = data.convert::<f32>().to_vec::<f32>().expect("f32 values");
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    prop_assert!(
        bad == 0,
        "{what}: {bad} of {} values not finite",
        values.len()
    );
    Ok(())
}

/// Output finite; gradients of a weighted sum finite for every input that asked for one.
fn check_output<const D: usize>(
    what: &str,
    output: Tensor<B, D>,
    inputs: &[Tensor<B, D>],
) -> Result<(), TestCaseError> {
    all_finite(what, output.clone().into_data())?;
    let weights = output.clone().detach().cos();
    let grads = (output * weights).sum().backward();
    for (name, input) in ["dQ", "dK", "dV"].iter().zip(inputs) {
        if let Some(grad) = input.grad(&grads) {
            all_finite(&format!("{what} {name}"), grad.into_data())?;
        }
    }
    Ok(())
}

/// Typed errors pass, unless the call was well formed; `Ok` outputs are checked.
fn expect<T>(
    what: &str,
    call: &Call,
    result: Result<T, DilatedAttentionError>,
    must_succeed: bool,
    check: impl FnOnce(T) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(value) => {
            count(what, true);
            check(value)
        }
        Err(error) => {
            count(what, false);
            prop_assert!(
                !(must_succeed && call.well_formed()),
                "{what}: a well-formed call failed: {error}"
            );
            Ok(())
        }
    }
}

fn functional(call: &Call, device: &Device<B>) -> Result<(), TestCaseError> {
    let [q, k, v] = heads_inputs(call, device);
    let inputs = [q.clone(), k.clone(), v.clone()];
    let result = dilated_attention_with_lse_masked(q, k, v, mask(call, device), &call.config());
    expect("functional", call, result, true, |(out, lse)| {
        let lse = lse.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        prop_assert!(
            lse.iter().all(|v| v.is_finite() || *v == f32::NEG_INFINITY),
            "LSE: NaN or +inf"
        );
        check_output("functional", out, &inputs)
    })
}

fn module(call: &Call, device: &Device<B>) -> Result<(), TestCaseError> {
    let [q, k, v] = heads_inputs(call, device);
    let inputs = [q.clone(), k.clone(), v.clone()];
    let result = call.config().try_init::<B>(device).and_then(|attention| {
        attention
            .try_forward_with_lse(q, k, v, mask(call, device))
            .map(|(out, _)| out)
    });
    expect("module", call, result, true, |out| {
        check_output("module", out, &inputs)
    })
}

/// Every kind of the factory: the head-layout kinds on `[batch, seq, heads, head_dim]`, the
/// multihead kinds on `[batch, seq, heads * head_dim]`.
fn factory(call: &Call, device: &Device<B>) -> Result<(), TestCaseError> {
    for kind in AttentionKind::ALL {
        let what = format!("factory {kind}");
        let attention = match create_attention::<B>(kind, &call.standard_config(), device) {
            Ok(attention) => attention,
            Err(_) => continue,
        };
        let [q, k, v] = heads_inputs(call, device);
        if matches!(kind, AttentionKind::Multihead) {
            let embed = |x: Tensor<B, 4>| {
                let [b, n, h, d] = x.dims();
                x.reshape([b, n, h * d])
            };
            let [q, k, v] = [q, k, v].map(embed);
            let inputs = [q.clone(), k.clone(), v.clone()];
            let result = attention.try_forward_embed(q, k, v);
            expect(&what, call, result, false, |out| {
                check_output(&what, out, &inputs)
            })?;
        } else {
            let inputs = [q.clone(), k.clone(), v.clone()];
            let result = attention.try_forward_heads(q, k, v);
            expect(&what, call, result, false, |out| {
                check_output(&what, out, &inputs)
            })?;
        }
    }
    Ok(())
}

/// The ring on two in-process ranks, each with its own shard of `call.seq` rows.
fn ring(call: &Call, device: &Device<B>) -> Result<(), TestCaseError> {
    let ranks = InProcessCommunicator::<Inner>::group(vec![Default::default(); 2]);
    let outcomes: Vec<Result<(), TestCaseError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(rank, communicator)| {
                scope.spawn(move || {
                    let mut local = call.clone();
                    local.seed = call.seed.wrapping_add(rank as u64 * 7);
                    let attention = match dilated_attention::create_ring_attention::<B>(
                        AttentionKind::Ring,
                        &local.standard_config(),
                        Arc::new(communicator),
                    ) {
                        Ok(attention) => attention,
                        Err(_) => return Ok(()),
                    };
                    let [q, k, v] = heads_inputs(&local, device);
                    let inputs = [q.clone(), k.clone(), v.clone()];
                    let result = attention.try_forward_heads(q, k, v);
                    expect("ring", &local, result, false, |out| {
                        check_output("ring", out, &inputs)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a rank panicked"))
            .collect()
    });
    outcomes.into_iter().collect()
}

fn cases() -> u32 {
    let default = if cfg!(any(feature = "wgpu", feature = "cuda")) {
        24
    } else {
        256
    };
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How many calls of each kind ran to `Ok` and how many were typed errors.
struct Tally {
    ok: [AtomicUsize; 4],
    errors: [AtomicUsize; 4],
}

const SITES: [&str; 4] = ["functional", "module", "factory", "ring"];

static TALLY: Tally = Tally {
    ok: [const { AtomicUsize::new(0) }; 4],
    errors: [const { AtomicUsize::new(0) }; 4],
};

fn count(site: &str, ok: bool) {
    let i = SITES
        .iter()
        .position(|s| site.starts_with(s))
        .expect("a call site");
    let counters = if ok { &TALLY.ok } else { &TALLY.errors };
    counters[i].fetch_add(1, Ordering::Relaxed);
}

#[test]
fn every_call_is_ok_and_finite_or_a_typed_error() {
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&calls(), |call| {
        let device: Device<B> = Default::default();
        functional(&call, &device)?;
        module(&call, &device)?;
        factory(&call, &device)?;
        ring(&call, &device)
    });
    for (i, site) in SITES.iter().enumerate() {
        println!(
            "{site}: {} Ok, {} typed errors",
            TALLY.ok[i].load(Ordering::Relaxed),
            TALLY.errors[i].load(Ordering::Relaxed)
        );
    }
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The generator is tuned so that both outcomes are common: a test that only ever saw
    // errors would check nothing.
    for (i, site) in SITES.iter().enumerate() {
        let ok = TALLY.ok[i].load(Ordering::Relaxed);
        assert!(ok * 4 >= cases() as usize, "{site}: only {ok} calls ran");
    }
}
