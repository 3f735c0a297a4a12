//! GPU timing of Hilbert-ordered attention against plain dilated attention on the same inputs
//! (issue 5: the ordering must cost < 10% extra). One JSON line per (grid, pass, implementation):
//! median milliseconds over repeats, each ending in a device sync. Implementations: `plain`
//! (raster order), `hilbert` (`HilbertDilatedAttention`: the kernels read the order) and
//! `gathered` (the straightforward way: `select` along the curve, the plain call, `select`
//! back; what `HilbertDilatedAttention` did before the kernels read the order), and two controls
//! through `dilated_attention_along_order`: `identity` (the order `0..n`: the cost of reading
//! rows through an order, without moving any row) and `reversed` (the order `n-1..0`: every row
//! moved, yet each tile's rows still contiguous in memory).
//!
//! Each pass warms every implementation up (two calls), then times them in interleaved rounds.
//!
//! ```text
//! cargo build --release -p dilated-attention-hilbert --features test-cuda --example hilbert_bench
//! hilbert_bench 256 512
//! HILBERT_BENCH_IMPLS=plain,hilbert hilbert_bench 256
//! ```
//! Arguments: grid sides (square grids); bf16, 8 heads x 64, pairs (2048,1),(4096,2),(8192,4).

use std::time::Instant;

use burn::backend::{Autodiff, Cuda};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use dilated_attention_core::{DilatedAttentionConfig, SequenceOrder, index_tensor};
use dilated_attention_hilbert::HilbertDilatedAttentionConfig;
use dilated_attention_kernels::{dilated_attention_along_order, dilated_attention_with_lse};

type Bench = Autodiff<Cuda>;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Timed calls per implementation (after two untimed ones).
const REPEATS: usize = 9;

/// Every implementation, in the order they run in each round.
const IMPLEMENTATIONS: [&str; 5] = ["plain", "hilbert", "gathered", "identity", "reversed"];

fn main() {
    // `HILBERT_BENCH_IMPLS=plain,hilbert` runs a subset.
    let implementations: Vec<String> = std::env::var("HILBERT_BENCH_IMPLS").map_or_else(
        |_| IMPLEMENTATIONS.iter().map(|s| s.to_string()).collect(),
        |list| {
            list.split(',')
                .filter(|s| IMPLEMENTATIONS.contains(s))
                .map(str::to_string)
                .collect()
        },
    );
    let sides: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sides = if sides.is_empty() {
        vec![256, 512]
    } else {
        sides
    };
    let device = Default::default();
    let cfg = DilatedAttentionConfig::new(vec![2048, 4096, 8192], vec![1, 2, 4]);
    for side in sides {
        let n = side * side;
        let hilbert = HilbertDilatedAttentionConfig::new(cfg.clone())
            .with_grid(Some([side, side]))
            .init::<Bench>(&device);
        let make = || {
            Tensor::<Bench, 4>::random([1, n, 8, 64], Distribution::Normal(0.0, 1.0), &device)
                .cast(DType::BF16)
        };
        let (q, k, v) = (make(), make(), make());
        let order = hilbert.order(n).expect("grid of n cells");
        let along = index_tensor::<Bench>(order.order().iter().copied(), &device);
        let back = index_tensor::<Bench>(order.inverse().iter().copied(), &device);
        let identity = SequenceOrder::new((0..n).collect()).expect("a permutation");
        let reversed = SequenceOrder::new((0..n).rev().collect()).expect("a permutation");
        for backward in [false, true] {
            let run = |implementation: &str| {
                let (q, k, v) = if backward {
                    (
                        q.clone().require_grad(),
                        k.clone().require_grad(),
                        v.clone().require_grad(),
                    )
                } else {
                    (q.clone(), k.clone(), v.clone())
                };
                let out = match implementation {
                    "hilbert" => hilbert.forward(q, k, v),
                    "identity" | "reversed" => {
                        let control = if implementation == "identity" {
                            &identity
                        } else {
                            &reversed
                        };
                        dilated_attention_along_order(q, k, v, None, &cfg, control)
                            .expect("valid call")
                            .0
                    }
                    "gathered" => {
                        let curve = |t: Tensor<Bench, 4>| t.select(1, along.clone());
                        dilated_attention_with_lse(curve(q), curve(k), curve(v), &cfg)
                            .expect("valid call")
                            .0
                            .select(1, back.clone())
                    }
                    _ => {
                        dilated_attention_with_lse(q, k, v, &cfg)
                            .expect("valid call")
                            .0
                    }
                };
                if backward {
                    drop(out.cast(DType::F32).sum().backward());
                } else {
                    drop(out);
                }
                Bench::sync(&device).expect("sync");
            };
            for implementation in &implementations {
                run(implementation);
                run(implementation);
            }
            // Rounds interleave the implementations, so that a drift of the GPU's clocks over
            // the run falls on all of them alike.
            let mut times = vec![Vec::new(); implementations.len()];
            for _ in 0..REPEATS {
                for (implementation, times) in implementations.iter().zip(&mut times) {
                    let t = Instant::now();
                    run(implementation);
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            for (implementation, times) in implementations.iter().zip(times) {
                println!(
                    "{{\"grid\":[{side},{side}],\"seq\":{n},\"dtype\":\"bf16\",\"pass\":\"{}\",\"impl\":\"{}\",\"median_ms\":{:.3},\"repeats\":{REPEATS}}}",
                    if backward { "fwd_bwd" } else { "fwd" },
                    implementation,
                    median(times) * 1e3
                );
            }
        }
    }
}
