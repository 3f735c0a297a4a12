//! Quick start: a small model built from `MultiheadDilatedAttention`, run on a 16K-token input.
//!
//! ```text
//! cargo run --release -p quickstart                    # CPU (ndarray), the default
//! cargo run --release -p quickstart --features wgpu    # WGPU (Vulkan / Metal / DX12)
//! cargo run --release -p quickstart --features cuda    # CUDA
//! ```
//! It prints the backend, the shapes, and the median wall time of the forward pass (the device
//! is synchronised inside the timed region).

use std::time::Instant;

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use dilated_attention::prelude::*;

#[cfg(feature = "cuda")]
type B = dilated_attention::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type B = dilated_attention::backend::Wgpu;
#[cfg(all(feature = "ndarray", not(any(feature = "wgpu", feature = "cuda"))))]
type B = dilated_attention::backend::NdArray;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Runs a small MultiheadDilatedAttention model on a long input")]
struct Args {
    /// Tokens in the input sequence.
    #[arg(long, default_value_t = 16_384)]
    seq: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Model width.
    #[arg(long, default_value_t = 256)]
    embed_dim: usize,
    /// Number of heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Segment lengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2048,4096,8192")]
    segments: Vec<usize>,
    /// Dilation rates, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    rates: Vec<usize>,
    /// Use the PyTorch library's head-grouped mode instead of LongNet's.
    #[arg(long)]
    head_grouped: bool,
    /// Causal masking.
    #[arg(long)]
    causal: bool,
    /// Timed repetitions (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

/// A tiny model: pre-norm residual block around multihead dilated attention.
#[derive(Module, Debug)]
struct TinyModel<B: Backend> {
    norm: LayerNorm<B>,
    attention: MultiheadDilatedAttention<B>,
}

impl<B: DilatedAttentionBackend> TinyModel<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>, DilatedAttentionError> {
        let h = self.norm.forward(x.clone());
        Ok(x + self.attention.try_forward(h.clone(), h.clone(), h, None)?)
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

fn run(args: &Args) -> Result<(), DilatedAttentionError> {
    let device: burn::tensor::Device<B> = Default::default();
    let mode = if args.head_grouped {
        DilationMode::HeadGrouped
    } else {
        DilationMode::LongNet
    };
    let attention = DilatedAttentionConfig::new(args.segments.clone(), args.rates.clone())
        .with_mode(mode)
        .with_causal(args.causal);
    let model = TinyModel {
        norm: LayerNormConfig::new(args.embed_dim).init(&device),
        attention: MultiheadDilatedAttentionConfig::new(args.embed_dim, args.heads, attention)
            .with_rotary(true)
            .try_init(&device)?,
    };
    println!("backend      {}", <B as Backend>::name(&device));
    println!(
        "model        {} parameters, {} heads of {}",
        model.num_params(),
        args.heads,
        args.embed_dim / args.heads
    );
    println!(
        "pairs        segments {:?}, rates {:?}, {mode:?}, causal {}",
        args.segments, args.rates, args.causal
    );
    let x = Tensor::<B, 3>::random(
        [args.batch, args.seq, args.embed_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    println!("input        {:?}", x.dims());

    let mut times = Vec::with_capacity(args.repeats);
    let mut shape = [0; 3];
    for i in 0..=args.repeats {
        let start = Instant::now();
        let y = model.forward(x.clone())?;
        // Reading one value back synchronises the device inside the timed region.
        let checksum = y.clone().abs().mean().into_scalar();
        let elapsed = start.elapsed().as_secs_f64();
        shape = y.dims();
        if i == 0 {
            println!("warm-up      {elapsed:.3} s (mean |y| = {checksum:.4})");
        } else {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("output       {shape:?}");
    println!(
        "forward      median {median:.3} s over {} runs ({:.0} tokens/s)",
        times.len(),
        (args.batch * args.seq) as f64 / median
    );
    Ok(())
}
