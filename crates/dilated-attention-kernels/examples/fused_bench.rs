//! GPU harness for the fused kernels: one JSON line per (implementation, mode, dtype, sequence,
//! pass) with the median time over repeats, tokens/s, useful TFLOP/s (the issue's count:
//! `4 d sum m^2` per head and pair, `2 d m (m + 1)` causal; forward+backward counted as 3.5x the
//! forward, FlashAttention's convention; the backward is seeded with ones of the output, as the
//! PyTorch baseline's `out.backward(torch.ones_like(out))`), the memory the call reserved beyond
//! its inputs, and what one forward leaves allocated while its output and LSE are alive
//! (`held_after_forward_mb`, next to `output_and_lse_mb = b n h (d E + 4)`: the issue's measure
//! of the forward's extra memory).
//!
//! ```text
//! cargo build --release -p dilated-attention-kernels --features test-cuda --example fused_bench
//! fused_bench --seqs 8192,32768 --dtypes bf16,f32 --modes head_grouped,longnet --passes fwd,fwd_bwd
//! ```
//! `--floor` also prints, per dtype and sequence, the harness's per-call floor (one elementwise
//! kernel over an input, timed the same way: `"impl":"floor"`).
//! Dtype `tf32` runs `f32` inputs with `allow_tf32` (the forward on TF32 tensor cores).
//! Built with `test-cuda` it runs burn's `Cuda` backend, with `test-wgpu` burn's `Wgpu` (kernels
//! compiled to WGSL), with `test-vulkan` burn's `Wgpu` with kernels compiled to SPIR-V; the
//! `runtime` field of each line says which.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion};
use burn_cubecl::cubecl::Runtime;
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedIndexPlan, DilationMode, KernelChoice, KernelStrategy,
};
use dilated_attention_kernels::{dilated_attention_with_lse, kernel_choice};

#[path = "common/bench_inputs.rs"]
mod bench_inputs;
use bench_inputs::{median, random_input};

#[cfg(feature = "test-cuda")]
type Bench = burn::backend::Cuda;
#[cfg(feature = "test-cuda")]
type BenchRuntime = burn_cubecl::cubecl::cuda::CudaRuntime;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type Bench = burn::backend::Wgpu;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type BenchRuntime = burn_cubecl::cubecl::wgpu::WgpuRuntime;

/// The runtime and shader compiler the binary was built for.
const RUNTIME: &str = if cfg!(feature = "test-cuda") {
    "cuda"
} else if cfg!(feature = "test-vulkan") {
    "wgpu_spirv"
} else {
    "wgpu_wgsl"
};

struct Args {
    seqs: Vec<usize>,
    batch: usize,
    heads: usize,
    head_dim: usize,
    pairs: Vec<(usize, usize)>,
    dtypes: Vec<String>,
    modes: Vec<String>,
    passes: Vec<String>,
    causal: bool,
    repeats: usize,
    warmup: usize,
    reference: bool,
    floor: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        seqs: vec![8192, 32768],
        batch: 1,
        heads: 8,
        head_dim: 64,
        pairs: vec![(2048, 1), (4096, 2), (8192, 4)],
        dtypes: vec!["bf16".into(), "f32".into()],
        modes: vec!["head_grouped".into(), "longnet".into()],
        passes: vec!["fwd".into(), "fwd_bwd".into()],
        causal: false,
        repeats: 5,
        warmup: 2,
        reference: false,
        floor: false,
    };
    let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seqs" => args.seqs = list(&value()).iter().map(|s| s.parse().unwrap()).collect(),
            "--batch" => args.batch = value().parse().unwrap(),
            "--heads" => args.heads = value().parse().unwrap(),
            "--head-dim" => args.head_dim = value().parse().unwrap(),
            "--pairs" => {
                args.pairs = list(&value())
                    .iter()
                    .map(|p| {
                        let (s, r) = p.split_once(':').expect("pairs as s:r,s:r");
                        (s.parse().unwrap(), r.parse().unwrap())
                    })
                    .collect()
            }
            "--dtypes" => args.dtypes = list(&value()),
            "--modes" => args.modes = list(&value()),
            "--passes" => args.passes = list(&value()),
            "--causal" => args.causal = true,
            "--reference" => args.reference = true,
            "--floor" => args.floor = true,
            "--repeats" => args.repeats = value().parse().unwrap(),
            "--warmup" => args.warmup = value().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// Useful forward FLOPs of a config (the issue's count).
fn useful_flops(cfg: &DilatedAttentionConfig, batch: usize, n: usize, h: usize, d: usize) -> f64 {
    let plan = DilatedIndexPlan::new(cfg, n, h).expect("valid config");
    let mut total = 0.0;
    for pair in plan.pairs() {
        for group in &pair.groups {
            let rows = group.rows;
            let per_segment = |m: usize| {
                let m = m as f64;
                if cfg.causal {
                    2.0 * d as f64 * m * (m + 1.0)
                } else {
                    4.0 * d as f64 * m * m
                }
            };
            let segments = rows.full_segments() as f64 * per_segment(rows.rows_per_full_segment())
                + per_segment(rows.rows_in_tail());
            total += segments * group.heads.len() as f64;
        }
    }
    total * batch as f64
}

/// Bytes of live allocations in the device's pool (not counting what it reserved around them).
fn in_use_bytes(device: &burn::tensor::Device<Bench>) -> u64 {
    BenchRuntime::client(device)
        .memory_usage()
        .map(|usage| usage.bytes_in_use)
        .unwrap_or(0)
}

fn reserved_bytes(device: &burn::tensor::Device<Bench>) -> u64 {
    BenchRuntime::client(device)
        .memory_usage()
        .map(|usage| usage.bytes_reserved)
        .unwrap_or(0)
}

/// The median of `repeats` host-timed calls of `run`, in seconds.
fn median_of_runs(repeats: usize, mut run: impl FnMut()) -> f64 {
    let times = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(times)
}

/// The per-call floor of this harness and runtime: one elementwise kernel over a `[b, n, h, d]`
/// input (`x * 2`, fused by Burn), timed like an attention call (median of `repeats` host-timed
/// calls, each ending with a device sync). Printed as `"impl":"floor"` lines.
fn floor_line(args: &Args, device: &burn::tensor::Device<Bench>, dtype_name: &str, dtype: DType) {
    for &n in &args.seqs {
        let shape = [args.batch, n, args.heads, args.head_dim];
        let x = random_input::<Autodiff<Bench>>(shape, dtype, device);
        Bench::sync(device).expect("sync");
        let run = || {
            let doubled = x.clone() * 2.0;
            Bench::sync(device).expect("sync");
            drop(doubled);
        };
        for _ in 0..args.warmup.max(1) {
            run();
        }
        let seconds = median_of_runs(args.repeats, run);
        println!(
            "{{\"runtime\":\"{RUNTIME}\",\"impl\":\"floor\",\"dtype\":\"{dtype_name}\",\"batch\":{},\"seq\":{n},\"heads\":{},\"head_dim\":{},\"median_ms\":{:.3},\"repeats\":{}}}",
            args.batch,
            args.heads,
            args.head_dim,
            seconds * 1e3,
            args.repeats
        );
    }
}

fn main() {
    let args = parse_args();
    let device: burn::tensor::Device<Bench> = Default::default();
    for dtype_name in &args.dtypes {
        let dtype = match dtype_name.as_str() {
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            "f32" | "tf32" => DType::F32,
            other => panic!("unknown dtype {other}"),
        };
        if args.floor {
            floor_line(&args, &device, dtype_name, dtype);
        }
        for mode_name in &args.modes {
            let mode = match mode_name.as_str() {
                "head_grouped" => DilationMode::HeadGrouped,
                "longnet" => DilationMode::LongNet,
                other => panic!("unknown mode {other}"),
            };
            let mut cfg = DilatedAttentionConfig::new(
                args.pairs.iter().map(|p| p.0).collect(),
                args.pairs.iter().map(|p| p.1).collect(),
            );
            cfg.mode = mode;
            cfg.causal = args.causal;
            cfg.allow_tf32 = dtype_name == "tf32";
            if args.reference {
                cfg.kernel_strategy = KernelStrategy::Reference;
            }
            for &n in &args.seqs {
                for pass in &args.passes {
                    let shape = [args.batch, n, args.heads, args.head_dim];
                    let KernelChoice { family, precision } =
                        kernel_choice::<Autodiff<Bench>>(shape, dtype, &device, &cfg)
                            .expect("a kernel for the call");
                    let client = BenchRuntime::client(&device);
                    client.memory_cleanup();
                    let make = || random_input::<Autodiff<Bench>>(shape, dtype, &device);
                    let (q, k, v) = (make(), make(), make());
                    Bench::sync(&device).expect("sync");
                    let base = reserved_bytes(&device);
                    let backward = pass == "fwd_bwd";
                    let run = || {
                        let (q, k, v) = if backward {
                            (
                                q.clone().require_grad(),
                                k.clone().require_grad(),
                                v.clone().require_grad(),
                            )
                        } else {
                            (q.clone(), k.clone(), v.clone())
                        };
                        let (out, _lse) =
                            dilated_attention_with_lse(q, k, v, &cfg).expect("valid call");
                        if backward {
                            // Seeded with ones of the output's shape and dtype, as PyTorch's
                            // `out.backward(torch.ones_like(out))` in the baseline script.
                            let grads = out.backward();
                            drop(grads);
                        } else {
                            drop(out);
                        }
                        Bench::sync(&device).expect("sync");
                    };
                    let started = Instant::now();
                    run();
                    let first_s = started.elapsed().as_secs_f64();
                    for _ in 1..args.warmup {
                        run();
                    }
                    let extra = reserved_bytes(&device).saturating_sub(base);
                    let secs = median_of_runs(args.repeats, run);
                    // A launch that failed (e.g. a kernel that did not compile) leaves the
                    // output unwritten: refuse to report a time for it.
                    // What the call leaves allocated while its output and LSE are alive: the
                    // forward's extra memory (the kernels allocate nothing else).
                    Bench::sync(&device).expect("sync");
                    let in_use_before = in_use_bytes(&device);
                    let (check, check_lse) =
                        dilated_attention_with_lse(q.clone(), k.clone(), v.clone(), &cfg)
                            .expect("valid call");
                    Bench::sync(&device).expect("sync");
                    let held = in_use_bytes(&device).saturating_sub(in_use_before);
                    let element_bytes = match dtype {
                        DType::F32 => 4,
                        _ => 2,
                    };
                    let rows = args.batch * n * args.heads;
                    let output_and_lse = rows * (args.head_dim * element_bytes + 4);
                    drop(check_lse);
                    let output_mean_abs: f32 =
                        check.cast(DType::F32).abs().mean().into_scalar().elem();
                    assert!(
                        output_mean_abs.is_finite() && output_mean_abs > 0.0,
                        "output mean |o| = {output_mean_abs}: the kernel did not produce an output"
                    );
                    let flops = useful_flops(&cfg, args.batch, n, args.heads, args.head_dim)
                        * if backward { 3.5 } else { 1.0 };
                    println!(
                        "{{\"runtime\":\"{RUNTIME}\",\"impl\":\"{}\",\"mode\":\"{mode_name}\",\"dtype\":\"{dtype_name}\",\"batch\":{},\"seq\":{n},\"heads\":{},\"head_dim\":{},\"causal\":{},\"pass\":\"{pass}\",\"median_ms\":{:.3},\"tokens_per_s\":{:.0},\"tflops\":{:.2},\"extra_reserved_mb\":{:.1},\"held_after_forward_mb\":{:.1},\"output_and_lse_mb\":{:.1},\"first_call_s\":{:.2},\"output_mean_abs\":{output_mean_abs:.4},\"family\":\"{family:?}\",\"precision\":\"{precision:?}\",\"repeats\":{}}}",
                        if args.reference {
                            "burn_reference"
                        } else if std::env::var("DILATED_ATTENTION_KERNEL")
                            .is_ok_and(|v| v == "portable")
                        {
                            "fused_portable"
                        } else {
                            "fused"
                        },
                        args.batch,
                        args.heads,
                        args.head_dim,
                        args.causal,
                        secs * 1e3,
                        (args.batch * n) as f64 / secs,
                        flops / secs / 1e12,
                        extra as f64 / 1e6,
                        held as f64 / 1e6,
                        output_and_lse as f64 / 1e6,
                        first_s,
                        args.repeats
                    );
                }
            }
        }
    }
}
