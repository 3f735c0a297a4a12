//! The slow, obvious test oracle (feature `test-oracle`): dense masked attention per pair.
//!
//! For every pair and head it builds the full `n x n` mask of allowed (query, key) pairs straight
//! from the definition in `DESIGN.md` (same segment, both positions selected by the head's offset,
//! causal, not padded), runs a dense softmax over it, and merges pairs by their log-sum-exp
//! (LongNet) or takes the head's group (HeadGrouped). It shares no code with the reference path
//! and needs `O(b h n^2)` memory: for tests on short sequences only.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use dilated_attention_core::{oracle::oracle_dilated_attention, DilatedAttentionConfig};
//!
//! let device = Default::default();
//! let cfg = DilatedAttentionConfig::new(vec![4], vec![2]);
//! let q = Tensor::<NdArray, 4>::random([1, 9, 2, 8], Distribution::Default, &device);
//! let (out, lse) = oracle_dilated_attention(q.clone(), q.clone(), q, None, &cfg);
//! assert_eq!(out.dims(), [1, 9, 2, 8]);
//! assert_eq!(lse.dims(), [1, 9, 2]);
//! ```

use burn::tensor::{Bool, Tensor, TensorData, activation::softmax, backend::Backend};

use crate::{DilatedAttentionConfig, DilationMode};

/// Whether key `k` is visible to query `q` for a pair `(s, r)` and offset `o` in a sequence of `n`.
pub fn allowed(n: usize, s: usize, r: usize, o: usize, causal: bool, q: usize, k: usize) -> bool {
    let s = s.min(n);
    let selected = |p: usize| {
        let within = p % s;
        within >= o && (within - o).is_multiple_of(r)
    };
    q / s == k / s && selected(q) && selected(k) && (!causal || k <= q)
}

/// Dense dilated attention by the definition. Inputs `[batch, seq, heads, head_dim]`, mask
/// `[batch, seq]` (true = padded). Returns the output and the log-sum-exp (`-inf` where a query
/// sees no key).
///
/// # Panics
/// If the config is invalid or, in `HeadGrouped` mode, has more pairs than heads.
pub fn oracle_dilated_attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    key_padding_mask: Option<Tensor<B, 2, Bool>>,
    config: &DilatedAttentionConfig,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    config.validate().expect("oracle needs a valid config");
    let [b, n, h, d] = query.dims();
    let device = query.device();
    let g = config.num_pairs();
    let padded: Vec<bool> = match &key_padding_mask {
        Some(m) => m.to_data().to_vec::<bool>().expect("bool mask"),
        None => vec![false; b * n],
    };
    let scale = config.scale.unwrap_or(1.0 / (d as f64).sqrt());
    // [b, h, n, d]
    let q = query.swap_dims(1, 2);
    let k = key.swap_dims(1, 2);
    let v = value.swap_dims(1, 2);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale; // [b, h, n, n]

    // Which pair and offset each head uses.
    let uses = |pair: usize, head: usize| -> Option<usize> {
        let r = config.dilation_rates[pair];
        match config.mode {
            DilationMode::LongNet => Some(head % r),
            DilationMode::HeadGrouped => {
                assert!(h >= g, "HeadGrouped needs heads >= pairs");
                let (base, extra) = (h / g, h % g);
                let group = (0..g)
                    .find(|&i| {
                        let start = i * base + i.min(extra);
                        head >= start && head < start + base + usize::from(i < extra)
                    })
                    .expect("every head has a group");
                (group == pair).then_some(pair % r)
            }
        }
    };

    let mut outs = Vec::with_capacity(g);
    let mut lses = Vec::with_capacity(g);
    for pair in 0..g {
        let (s, r) = (config.segment_lengths[pair], config.dilation_rates[pair]);
        let mut mask = vec![false; b * h * n * n];
        for bi in 0..b {
            for hi in 0..h {
                let Some(o) = uses(pair, hi) else { continue };
                for qi in 0..n {
                    for ki in 0..n {
                        mask[((bi * h + hi) * n + qi) * n + ki] =
                            !padded[bi * n + ki] && allowed(n, s, r, o, config.causal, qi, ki);
                    }
                }
            }
        }
        let allowed = Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [b, h, n, n]), &device);
        let row_has_key = allowed.clone().int().sum_dim(3).greater_elem(0); // [b, h, n, 1]
        let no_key_rows = row_has_key.clone().bool_not();
        let s_masked = scores
            .clone()
            .mask_fill(allowed.clone().bool_not(), f32::NEG_INFINITY)
            .mask_fill(no_key_rows.clone().expand([b, h, n, n]), 0.0);
        let probs = softmax(s_masked.clone(), 3) * allowed.float();
        let out = probs.matmul(v.clone()); // rows without keys are 0
        let max = s_masked.clone().max_dim(3);
        let lse = (max.clone() + (s_masked - max).exp().sum_dim(3).log())
            .mask_fill(no_key_rows, f32::NEG_INFINITY); // [b, h, n, 1]
        outs.push(out);
        lses.push(lse);
    }

    let (out, lse) = match config.mode {
        DilationMode::HeadGrouped => {
            // Each head uses one pair; the others gave 0 and -inf.
            let out = outs.into_iter().reduce(|a, x| a + x).expect("pairs");
            let lse: Tensor<B, 5> = Tensor::stack(lses, 0);
            (out, lse.max_dim(0).reshape([b, h, n, 1]))
        }
        DilationMode::LongNet => {
            let lse: Tensor<B, 5> = Tensor::stack(lses, 0); // [g, b, h, n, 1]
            let max = lse.clone().max_dim(0);
            let none = max.clone().equal_elem(f32::NEG_INFINITY);
            let max = max.mask_fill(none.clone(), 0.0);
            let w = (lse - max.clone()).exp(); // [g, b, h, n, 1]
            let total = w.clone().sum_dim(0).mask_fill(none.clone(), 1.0);
            let mut out = Tensor::<B, 4>::zeros([b, h, n, d], &device);
            for (i, o) in outs.into_iter().enumerate() {
                let wi = w.clone().narrow(0, i, 1).reshape([b, h, n, 1]);
                out = out + o * wi;
            }
            let out = out / total.clone().reshape([b, h, n, 1]);
            let lse = (max + total.log()).mask_fill(none, f32::NEG_INFINITY);
            (out, lse.reshape([b, h, n, 1]))
        }
    };
    (out.swap_dims(1, 2), lse.reshape([b, h, n]).swap_dims(1, 2))
}

/// A tensor of standard-normal values from a seed (splitmix64 + Box-Muller), independent of the
/// backend's global random state, so a failing case reproduces from its seed alone.
pub fn seeded_normal<B: Backend, const D: usize>(
    seed: u64,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let len: usize = shape.iter().product();
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut values = Vec::with_capacity(len);
    while values.len() < len {
        let u1 = ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * core::f64::consts::PI * u2;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(len);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A `[batch, seq]` padding mask from a seed: each key padded with probability `rate`.
pub fn seeded_padding<B: Backend>(
    seed: u64,
    batch: usize,
    seq: usize,
    rate: f64,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let mut state = seed ^ 0xD1B5_4A32_D192_ED03;
    let values: Vec<bool> = (0..batch * seq)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 <= rate
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [batch, seq]), device)
}

/// One random test case of the equivalence suites: a shape, a config and the seeds of its inputs.
#[derive(Debug, Clone)]
pub struct OracleCase {
    /// `[batch, seq, heads, head_dim]`.
    pub shape: [usize; 4],
    /// Segment length of each pair.
    pub segments: Vec<usize>,
    /// Dilation rate of each pair.
    pub rates: Vec<usize>,
    /// Mode of the config.
    pub mode: DilationMode,
    /// Causal masking.
    pub causal: bool,
    /// Probability that a key is padded; `None` for no mask.
    pub padding: Option<f64>,
    /// Seed of the inputs.
    pub seed: u64,
}

impl OracleCase {
    /// The config of the case.
    pub fn config(&self) -> DilatedAttentionConfig {
        DilatedAttentionConfig::new(self.segments.clone(), self.rates.clone())
            .with_mode(self.mode)
            .with_causal(self.causal)
    }

    /// True unless `HeadGrouped` mode has fewer heads than pairs (a config error).
    pub fn valid(&self) -> bool {
        self.mode == DilationMode::LongNet || self.shape[2] >= self.segments.len()
    }

    /// Seeded query, key and value.
    pub fn inputs<B: Backend>(&self, device: &B::Device) -> [Tensor<B, 4>; 3] {
        [0, 1, 2].map(|i| seeded_normal::<B, 4>(self.seed.wrapping_add(i), self.shape, device))
    }

    /// Seeded `[batch, seq]` padding mask, if the case has one.
    pub fn padding_mask<B: Backend>(&self, device: &B::Device) -> Option<Tensor<B, 2, Bool>> {
        self.padding.map(|rate| {
            seeded_padding::<B>(self.seed ^ 7, self.shape[0], self.shape[1], rate, device)
        })
    }
}

/// The shapes and configs the equivalence suites draw from: batch 1-3, sequence lengths 1-300
/// with primes and other odd values, 1-7 heads, head dims from `head_dims`, 1-3 pairs with
/// segments 1-320 and rates 1-5, both modes, causal or not, no / 25% / all keys padded, and a
/// fresh seed per case.
pub fn arbitrary_case(
    head_dims: Vec<usize>,
) -> impl proptest::strategy::Strategy<Value = OracleCase> {
    use proptest::prelude::*;
    (
        1usize..=3,
        prop_oneof![
            1usize..=300,
            Just(1),
            Just(97),
            Just(101),
            Just(127),
            Just(257)
        ],
        1usize..=7,
        prop::sample::select(head_dims),
        prop::collection::vec((1usize..=320, 1usize..=5), 1..=3),
        prop_oneof![Just(DilationMode::LongNet), Just(DilationMode::HeadGrouped)],
        any::<bool>(),
        prop_oneof![Just(None), Just(Some(0.25)), Just(Some(1.0))],
        any::<u64>(),
    )
        .prop_map(
            |(batch, seq, heads, head_dim, pairs, mode, causal, padding, seed)| OracleCase {
                shape: [batch, seq, heads, head_dim],
                segments: pairs.iter().map(|p| p.0).collect(),
                rates: pairs.iter().map(|p| p.1).collect(),
                mode,
                causal,
                padding,
                seed,
            },
        )
}
