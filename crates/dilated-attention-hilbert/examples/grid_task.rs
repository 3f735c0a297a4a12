//! A small task that needs 2-D locality, trained twice with the same budget: once with dilated
//! attention over the tokens in raster order, once along the Hilbert curve.
//!
//! Tokens sit on a `side x side` grid (random symbols of a small vocabulary, raster order); the
//! target of every token is the symbol directly above it (a "none" class on the top row). The
//! model is an embedding of symbol and position, one attention layer of one pair (segments of
//! `segment` tokens, dilation 1) and a linear read-out. In raster order a segment of `side`
//! tokens is one row, so the token above is never in the same segment; along the Hilbert curve a
//! segment of `side` tokens is a `sqrt(side) x sqrt(side)` patch, which holds the token above for
//! most rows. Same model, same seed, same data, same steps: only the order differs.
//!
//! ```text
//! cargo run --release -p dilated-attention-hilbert --example grid_task
//! cargo run --release -p dilated-attention-hilbert --example grid_task -- 300 16 16
//! ```
//! Arguments: steps, grid side, segment length. Prints JSON lines (loss during training, then the
//! held-out accuracy on the rows below the top one).

use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use dilated_attention_core::DilatedAttentionConfig;
use dilated_attention_hilbert::{HilbertDilatedAttention, HilbertDilatedAttentionConfig};
use dilated_attention_kernels::{DilatedAttentionBackend, dilated_attention_with_lse};

/// The training backend (the module generics are named `B`, as Burn's `Module` derive expects).
type Train = Autodiff<NdArray>;

const VOCAB: usize = 8;
const WIDTH: usize = 32;
const HEADS: usize = 2;
const BATCH: usize = 16;

#[derive(Module, Debug)]
struct GridModel<B: Backend> {
    symbol: Embedding<B>,
    position: Embedding<B>,
    qkv: Linear<B>,
    mix: Linear<B>,
    read_out: Linear<B>,
    hilbert: HilbertDilatedAttention<B>,
    #[module(skip)]
    attention: DilatedAttentionConfig,
    #[module(skip)]
    along_curve: bool,
}

impl<B: DilatedAttentionBackend> GridModel<B> {
    fn new(side: usize, segment: usize, along_curve: bool, device: &B::Device) -> Self {
        let attention = DilatedAttentionConfig::new(vec![segment], vec![1]);
        Self {
            symbol: EmbeddingConfig::new(VOCAB, WIDTH).init(device),
            position: EmbeddingConfig::new(side * side, WIDTH).init(device),
            qkv: LinearConfig::new(WIDTH, 3 * WIDTH).init(device),
            mix: LinearConfig::new(WIDTH, WIDTH).init(device),
            read_out: LinearConfig::new(2 * WIDTH, VOCAB + 1).init(device),
            hilbert: HilbertDilatedAttentionConfig::new(attention.clone())
                .with_grid(Some([side, side]))
                .init(device),
            attention,
            along_curve,
        }
    }

    /// Logits `[batch, seq, vocab + 1]`.
    fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let x = self.symbol.forward(tokens) + self.position.forward(positions);
        let qkv = self.qkv.forward(x.clone());
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * WIDTH, WIDTH)
                .reshape([batch, seq, HEADS, WIDTH / HEADS])
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let attended = if self.along_curve {
            self.hilbert.forward(q, k, v)
        } else {
            dilated_attention_with_lse(q, k, v, &self.attention)
                .expect("valid attention call")
                .0
        };
        let attended = self.mix.forward(attended.reshape([batch, seq, WIDTH]));
        self.read_out.forward(Tensor::cat(vec![x, attended], 2))
    }
}

/// A batch of grids and their targets (the symbol above; `VOCAB` on the top row).
fn batch<B: Backend>(
    seed: u64,
    side: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let seq = side * side;
    let mut tokens = Vec::with_capacity(BATCH * seq);
    for _ in 0..BATCH * seq {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        tokens.push((state % VOCAB as u64) as i64);
    }
    let targets: Vec<i64> = (0..BATCH * seq)
        .map(|i| {
            let p = i % seq;
            if p < side {
                VOCAB as i64
            } else {
                tokens[i - side]
            }
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(tokens, [BATCH, seq]), device),
        Tensor::from_data(TensorData::new(targets, [BATCH, seq]), device),
    )
}

fn loss<B: AutodiffBackend + DilatedAttentionBackend>(
    model: &GridModel<B>,
    tokens: Tensor<B, 2, Int>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let logits = model.forward(tokens);
    let [batch, seq, classes] = logits.dims();
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(
            logits.reshape([batch * seq, classes]),
            targets.reshape([batch * seq]),
        )
}

/// Accuracy on the positions below the top row of a held-out batch.
fn accuracy<B: DilatedAttentionBackend>(model: &GridModel<B>, side: usize) -> f64 {
    let device = Default::default();
    let (tokens, targets) = batch::<B>(u64::MAX, side, &device);
    let predicted = model.forward(tokens).argmax(2).squeeze_dim::<2>(2);
    let seq = side * side;
    let below = |t: Tensor<B, 2, Int>| t.narrow(1, side, seq - side);
    let hits: i64 = below(predicted)
        .equal(below(targets))
        .int()
        .sum()
        .into_scalar()
        .elem();
    hits as f64 / (BATCH * (seq - side)) as f64
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let steps = args.first().copied().unwrap_or(300);
    let side = args.get(1).copied().unwrap_or(16);
    let segment = args.get(2).copied().unwrap_or(side);
    let device = Default::default();
    for along_curve in [false, true] {
        let order = if along_curve { "hilbert" } else { "raster" };
        Train::seed(&device, 7);
        let mut model = GridModel::<Train>::new(side, segment, along_curve, &device);
        let mut optim = AdamConfig::new().init::<Train, GridModel<Train>>();
        let start = Instant::now();
        for step in 0..steps {
            let (tokens, targets) = batch::<Train>(step as u64, side, &device);
            let loss = loss(&model, tokens, targets);
            if step % 50 == 0 || step + 1 == steps {
                let value: f32 = loss.clone().into_scalar().elem();
                println!(
                    "{{\"order\":\"{order}\",\"step\":{step},\"loss\":{value:.4},\"seconds\":{:.1}}}",
                    start.elapsed().as_secs_f64()
                );
            }
            let raw = loss.backward();
            let grads = GradientsParams::from_grads(raw, &model);
            model = optim.step(3e-3, model, grads);
        }
        println!(
            "{{\"order\":\"{order}\",\"side\":{side},\"segment\":{segment},\"steps\":{steps},\"held_out_accuracy_below_top_row\":{:.4},\"chance\":{:.4}}}",
            accuracy(&model.valid(), side),
            1.0 / VOCAB as f64
        );
    }
}
