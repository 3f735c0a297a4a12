//! Where one attention call's time goes outside its kernels, layer by layer of Burn's stack on
//! CUDA: `Autodiff<Fusion<CubeBackend>>` (what `fused_bench` and a training loop run),
//! `Fusion<CubeBackend>` (burn's default `Cuda`), `CubeBackend` alone, and `Autodiff<CubeBackend>`.
//!
//! Per layer, sequence and pass it prints one JSON line with four medians over `--repeats`:
//! - `synced_ms`: the call and a device sync, as `fused_bench` times it;
//! - `enqueue_ms`: the call alone, until it returns to the host, and `sync_ms`: the sync after it
//!   (how the two share the time depends on `DILATED_ATTENTION_SUBMIT`: lazy leaves the launches
//!   queued until the sync);
//! - `pipelined_ms`: `--burst` calls back to back and one sync, divided by `--burst`: the larger
//!   of the host's and the device's time per call.
//!
//! The floor (`"impl":"floor"`) is one elementwise kernel (`x * 2`) timed the same way.
//!
//! ```text
//! cargo build --release -p dilated-attention-kernels --features test-cuda --example call_overhead
//! call_overhead --seqs 64,8192 --repeats 30 --burst 50
//! ```

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use dilated_attention_core::{DilatedAttentionConfig, DilationMode};
use dilated_attention_kernels::{DilatedAttentionBackend, dilated_attention_with_lse};

#[path = "common/bench_inputs.rs"]
mod bench_inputs;
use bench_inputs::{median, random_input};

/// burn's `Cuda` without fusion.
type Cube = CubeBackend<CudaRuntime, f32, i32, u8>;

struct Args {
    seqs: Vec<usize>,
    modes: Vec<DilationMode>,
    dtype: DType,
    repeats: usize,
    burst: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        seqs: vec![64, 8192],
        modes: vec![DilationMode::HeadGrouped, DilationMode::LongNet],
        dtype: DType::BF16,
        repeats: 30,
        burst: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seqs" => args.seqs = value.split(',').map(|s| s.parse().unwrap()).collect(),
            "--modes" => {
                args.modes = value
                    .split(',')
                    .map(|m| match m {
                        "head_grouped" => DilationMode::HeadGrouped,
                        "longnet" => DilationMode::LongNet,
                        other => panic!("unknown mode {other}"),
                    })
                    .collect()
            }
            "--dtype" => {
                args.dtype = match value.as_str() {
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    "f32" => DType::F32,
                    other => panic!("unknown dtype {other}"),
                }
            }
            "--repeats" => args.repeats = value.parse::<usize>().unwrap().max(1),
            "--burst" => args.burst = value.parse::<usize>().unwrap().max(1),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The medians of one call, in milliseconds.
struct Timings {
    synced: f64,
    enqueue: f64,
    sync: f64,
    pipelined: f64,
}

/// Times `call` (which returns what must stay alive until the sync) the three ways.
fn time_call<B: Backend, T>(
    device: &B::Device,
    repeats: usize,
    burst: usize,
    mut call: impl FnMut() -> T,
) -> Timings {
    let sync = || B::sync(device).expect("sync");
    for _ in 0..3 {
        drop(call());
        sync();
    }
    let mut synced = Vec::new();
    let mut enqueue = Vec::new();
    let mut sync_times = Vec::new();
    let mut pipelined = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let kept = call();
        sync();
        synced.push(t.elapsed().as_secs_f64());
        drop(kept);

        let t = Instant::now();
        let kept = call();
        enqueue.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        sync();
        sync_times.push(t.elapsed().as_secs_f64());
        drop(kept);
    }
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..burst {
            drop(call());
        }
        sync();
        pipelined.push(t.elapsed().as_secs_f64() / burst as f64);
    }
    Timings {
        synced: median(synced) * 1e3,
        enqueue: median(enqueue) * 1e3,
        sync: median(sync_times) * 1e3,
        pipelined: median(pipelined) * 1e3,
    }
}

fn print_line(layer: &str, what: &str, mode: &str, pass: &str, seq: usize, t: &Timings) {
    println!(
        "{{\"layer\":\"{layer}\",\"impl\":\"{what}\",\"mode\":\"{mode}\",\"pass\":\"{pass}\",\"seq\":{seq},\"synced_ms\":{:.4},\"enqueue_ms\":{:.4},\"sync_ms\":{:.4},\"pipelined_ms\":{:.4}}}",
        t.synced, t.enqueue, t.sync, t.pipelined
    );
}

fn input<B: Backend>(seq: usize, dtype: DType, device: &B::Device) -> Tensor<B, 4> {
    random_input::<B>([1, seq, 8, 64], dtype, device)
}

fn config(mode: DilationMode) -> DilatedAttentionConfig {
    let mut cfg = DilatedAttentionConfig::new(vec![2048, 4096, 8192], vec![1, 2, 4]);
    cfg.mode = mode;
    cfg
}

fn mode_name(mode: DilationMode) -> &'static str {
    match mode {
        DilationMode::HeadGrouped => "head_grouped",
        DilationMode::LongNet => "longnet",
    }
}

/// The forward and the floor on layer `B`.
fn forward_layer<B: DilatedAttentionBackend>(layer: &str, args: &Args, device: &B::Device) {
    for &seq in &args.seqs {
        let x = input::<B>(seq, args.dtype, device);
        let t = time_call::<B, _>(device, args.repeats, args.burst, || x.clone() * 2.0);
        print_line(layer, "floor", "-", "fwd", seq, &t);
        for &mode in &args.modes {
            let cfg = config(mode);
            let [q, k, v] = [0; 3].map(|_| input::<B>(seq, args.dtype, device));
            let t = time_call::<B, _>(device, args.repeats, args.burst, || {
                dilated_attention_with_lse(q.clone(), k.clone(), v.clone(), &cfg).expect("call")
            });
            print_line(layer, "fused", mode_name(mode), "fwd", seq, &t);
        }
    }
}

/// Forward+backward (seeded with ones, as `fused_bench`) on the autodiff layer `B`.
fn backward_layer<B: AutodiffBackend + DilatedAttentionBackend>(
    layer: &str,
    args: &Args,
    device: &B::Device,
) {
    for &seq in &args.seqs {
        for &mode in &args.modes {
            let cfg = config(mode);
            let [q, k, v] = [0; 3].map(|_| input::<B>(seq, args.dtype, device));
            let t = time_call::<B, _>(device, args.repeats, args.burst, || {
                let (out, _lse) = dilated_attention_with_lse(
                    q.clone().require_grad(),
                    k.clone().require_grad(),
                    v.clone().require_grad(),
                    &cfg,
                )
                .expect("call");
                out.backward()
            });
            print_line(layer, "fused", mode_name(mode), "fwd_bwd", seq, &t);
        }
    }
}

fn main() {
    let args = parse_args();
    let device = Default::default();
    forward_layer::<Autodiff<burn::backend::Cuda>>("autodiff_fusion", &args, &device);
    forward_layer::<burn::backend::Cuda>("fusion", &args, &device);
    forward_layer::<Cube>("cube", &args, &device);
    forward_layer::<Autodiff<Cube>>("autodiff_cube", &args, &device);
    backward_layer::<Autodiff<burn::backend::Cuda>>("autodiff_fusion", &args, &device);
    backward_layer::<Autodiff<Cube>>("autodiff_cube", &args, &device);
}
