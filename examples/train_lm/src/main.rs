//! Trains a small `LongNetLm` on a long-range copy task: each sequence starts with `lag` random
//! tokens and then repeats itself with period `lag`, so every later token is predictable only by
//! attending `lag - 1` positions back. With the default lag 9 the loss falls from the chance level
//! (ln 16 = 2.77) to ~0.15 in 300 steps on a CPU; a lag of 65 (the needed key 64 positions away,
//! beyond the dense pair's segment of 32) learns far more slowly: it only began to leave the chance
//! level near step 280 (`benches/results/train-lm-cpu.md`).
//!
//! ```text
//! cargo run --release -p train_lm                       # CPU
//! cargo run --release -p train_lm --features cuda       # or wgpu
//! ```
//! It prints the loss on the repeated part, which starts near ln(vocab) (the chance level) and
//! falls as the model learns to look back.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Parser;
use dilated_attention::backend::Autodiff;
use dilated_attention::prelude::*;

#[cfg(feature = "cuda")]
type Inner = dilated_attention::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Inner = dilated_attention::backend::Wgpu;
#[cfg(all(feature = "ndarray", not(any(feature = "wgpu", feature = "cuda"))))]
type Inner = dilated_attention::backend::NdArray;
type B = Autodiff<Inner>;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Trains LongNetLm on a synthetic long-range copy task")]
struct Args {
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Period of the repetition (the first `lag` tokens are random).
    #[arg(long, default_value_t = 9)]
    lag: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 16)]
    vocab: usize,
    /// Optimiser steps.
    #[arg(long, default_value_t = 150)]
    steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Segment lengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    segments: Vec<usize>,
    /// Dilation rates, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    rates: Vec<usize>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

/// A batch of copy sequences from a seeded generator: `[batch, seq]`, period `lag`.
fn batch(step: usize, args: &Args, device: &burn::tensor::Device<B>) -> Tensor<B, 2, Int> {
    let mut state = 0x2545_F491_4F6C_DD1D_u64 ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut tokens = Vec::with_capacity(args.batch * args.seq);
    for _ in 0..args.batch {
        let first: Vec<i64> = (0..args.lag)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % args.vocab as u64) as i64
            })
            .collect();
        tokens.extend((0..args.seq).map(|t| first[t % args.lag]));
    }
    Tensor::from_data(TensorData::new(tokens, [args.batch, args.seq]), device)
}

fn run(args: &Args) -> Result<(), DilatedAttentionError> {
    if args.lag == 0 || args.lag + 1 >= args.seq {
        return Err(DilatedAttentionError::InvalidPositive {
            field: "lag (must be >= 1 and < seq - 1)",
            value: args.lag as f64,
        });
    }
    let device: burn::tensor::Device<B> = Default::default();
    let attention = DilatedAttentionConfig::new(args.segments.clone(), args.rates.clone());
    let config = LongNetLmConfig::new(args.vocab, 64, 4, 2, attention);
    let mut model = config.try_init::<B>(&device)?;
    let mut optim = AdamConfig::new().init();
    let lag = args.lag;
    println!(
        "backend {} | seq {} | batch {} | vocab {} (chance loss {:.3})",
        <B as Backend>::name(&device),
        args.seq,
        args.batch,
        args.vocab,
        (args.vocab as f64).ln()
    );
    let start = Instant::now();
    for step in 0..args.steps {
        let tokens = batch(step, args, &device);
        let loss = repeated_part_loss(&model, tokens, lag)?;
        if step % 10 == 0 || step + 1 == args.steps {
            let value: f32 = loss.clone().into_scalar().elem();
            println!(
                "step {step:4}  repeated-part loss {value:.4}  ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(args.lr, model, grads);
    }
    let held_out = batch(1_000_000, args, &device).inner();
    let loss: f32 = repeated_part_loss(&model.valid(), held_out, lag)?
        .into_scalar()
        .elem();
    println!("held-out repeated-part loss {loss:.4}");
    Ok(())
}

/// Cross-entropy of the predictions of the repeated part (positions `lag - 1 .. seq - 1`
/// predicting tokens `lag .. seq`).
fn repeated_part_loss<BB: DilatedAttentionBackend>(
    model: &LongNetLm<BB>,
    tokens: Tensor<BB, 2, Int>,
    lag: usize,
) -> Result<Tensor<BB, 1>, DilatedAttentionError> {
    let [batch, seq] = tokens.dims();
    let logits = model.try_forward(tokens.clone().narrow(1, 0, seq - 1))?;
    let vocab = logits.dims()[2];
    let logits = logits
        .narrow(1, lag - 1, seq - lag)
        .reshape([batch * (seq - lag), vocab]);
    let targets = tokens
        .narrow(1, lag, seq - lag)
        .reshape([batch * (seq - lag)]);
    Ok(burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, targets))
}
