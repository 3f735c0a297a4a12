//! One rank's work, on any backend: time the forward (and forward+backward) of the ring,
//! count its traffic, and compare with one device on the whole sequence.

use std::sync::Arc;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::{DType, Distribution, FloatDType, Tensor};
use dilated_attention::{
    Communicator, DilatedAttentionBackend, DilatedAttentionError, RingDilatedAttention,
    RingDilatedAttentionConfig, ShardLayout, dilated_attention_with_lse,
};
use dilated_attention_core::compare::max_scaled_error;
use dilated_attention_core::oracle::seeded_normal;
use dilated_attention_ring::TrafficCounter;

use crate::args::{Args, Precision};

/// What a run measures besides time: bytes in use on the rank's device (the backend's own
/// counter), and a way to start a peak measurement.
pub struct MemoryProbe<'a> {
    /// Bytes in use (or reserved) now, or the peak since `reset`.
    pub peak: &'a dyn Fn() -> u64,
    /// Starts a new peak measurement.
    pub reset: &'a dyn Fn(),
}

fn dtype_of(p: Precision) -> DType {
    match p {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F16 => DType::F16,
    }
}

fn cast<I: DilatedAttentionBackend, const D: usize>(t: Tensor<I, D>, p: Precision) -> Tensor<I, D> {
    match p {
        Precision::F32 => t,
        other => t.cast(FloatDType::from(dtype_of(other))),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Largest `|a - b| / (1 + |b|)` over the elements; infinite when either side holds a NaN or
/// an infinity the other does not ([`max_scaled_error`]).
fn max_error<I: DilatedAttentionBackend, const D: usize>(a: Tensor<I, D>, b: Tensor<I, D>) -> f64 {
    let a: Vec<f32> = a
        .cast(FloatDType::F32)
        .into_data()
        .to_vec()
        .expect("f32 values");
    let b: Vec<f32> = b
        .cast(FloatDType::F32)
        .into_data()
        .to_vec()
        .expect("f32 values");
    max_scaled_error(&a, &b)
}

/// Inputs of the run: the whole sequence (host-seeded, identical on every rank) with `--check`,
/// else only this rank's shard (device random).
fn inputs<I: DilatedAttentionBackend>(
    args: &Args,
    layout: &ShardLayout,
    rank: usize,
    device: &I::Device,
) -> ([Tensor<I, 4>; 3], Option<[Tensor<I, 4>; 4]>) {
    let global = [args.batch, args.seq, args.heads, args.head_dim];
    if args.check {
        let full: [Tensor<I, 4>; 4] = [1u64, 2, 3, 4]
            .map(|seed| cast(seeded_normal::<I, 4>(seed, global, device), args.dtype));
        let local = [0, 1, 2].map(|i| {
            layout
                .shard(full[i].clone(), rank)
                .expect("the global inputs have the layout's length")
        });
        (local, Some(full))
    } else {
        let local = [
            args.batch,
            layout.local_len(rank),
            args.heads,
            args.head_dim,
        ];
        let t = || {
            cast(
                Tensor::<I, 4>::random(local, Distribution::Normal(0.0, 1.0), device),
                args.dtype,
            )
        };
        ([t(), t(), t()], None)
    }
}

/// Per-repeat times, times inside the communicator, the last repeat's bytes (sent, received)
/// and the last repeat's result of `step`, after the warm-up calls.
type Measured<T> = (Vec<f64>, Vec<f64>, (u64, u64), T);

fn measure<I: DilatedAttentionBackend, T>(
    args: &Args,
    counter: &TrafficCounter<I>,
    memory: &MemoryProbe,
    step: impl Fn() -> Result<T, DilatedAttentionError>,
) -> Result<Measured<T>, DilatedAttentionError> {
    for _ in 0..args.warmup {
        step()?;
    }
    (memory.reset)();
    let (mut times, mut comm) = (Vec::new(), Vec::new());
    let mut last = None;
    let mut traffic = (0, 0);
    for _ in 0..args.repeats.max(1) {
        // the previous repeat's result is not kept alive through this one (peak memory)
        drop(last.take());
        counter.reset();
        let start = Instant::now();
        last = Some(step()?);
        times.push(start.elapsed().as_secs_f64());
        let totals = counter.totals();
        comm.push(totals.time.as_secs_f64());
        traffic = (totals.bytes_sent, totals.bytes_received);
    }
    Ok((times, comm, traffic, last.expect("at least one repeat")))
}

/// Runs one rank and returns its JSON lines.
///
/// # Errors
/// The ring's errors (communication included).
pub fn run_rank<I: DilatedAttentionBackend<Inner = I>>(
    communicator: Arc<dyn Communicator<I>>,
    args: &Args,
    backend: &str,
    memory: &MemoryProbe,
) -> Result<Vec<String>, DilatedAttentionError> {
    let cfg = args
        .config()
        .map_err(|reason| DilatedAttentionError::InvalidShards { reason })?;
    let (rank, world) = (communicator.rank(), communicator.world_size());
    let device = communicator.device().clone();
    let layout = if args.zigzag {
        ShardLayout::zigzag(args.seq, world)?
    } else {
        ShardLayout::contiguous(args.seq, world)?
    };
    let counter = Arc::new(TrafficCounter::new(communicator));
    let ring: RingDilatedAttention<I> = RingDilatedAttentionConfig::new(cfg.clone())
        .with_overlap(!args.no_overlap)
        .try_init(counter.clone())?
        .with_layout(layout.clone())?;
    let ring_train: RingDilatedAttention<Autodiff<I>> =
        RingDilatedAttentionConfig::new(cfg.clone())
            .with_overlap(!args.no_overlap)
            .try_init(counter.clone())?
            .with_layout(layout.clone())?;
    let ([q, k, v], full) = inputs::<I>(args, &layout, rank, &device);

    let mut lines = Vec::new();
    let mut report = |pass: &str,
                      times: Vec<f64>,
                      comm: Vec<f64>,
                      traffic: (u64, u64),
                      peak: u64,
                      error: Option<f64>| {
        let t = median(times);
        let c = median(comm);
        lines.push(format!(
            "{{\"impl\":\"ring\",\"backend\":\"{backend}\",\"rank\":{rank},\"world\":{world},\"seq\":{},\"local\":{},\"batch\":{},\"heads\":{},\"head_dim\":{},\"segments\":{:?},\"rates\":{:?},\"mode\":\"{:?}\",\"causal\":{},\"zigzag\":{},\"overlap\":{},\"dtype\":\"{:?}\",\"pass\":\"{pass}\",\"median_ms\":{:.3},\"tokens_per_s\":{:.0},\"comm_ms\":{:.3},\"comm_share\":{:.3},\"bytes_sent\":{},\"bytes_received\":{},\"peak_mb\":{:.1},\"max_err\":{}}}",
            args.seq, layout.local_len(rank), args.batch, args.heads, args.head_dim, cfg.segment_lengths, cfg.dilation_rates, cfg.mode, cfg.causal, args.zigzag, !args.no_overlap, args.dtype,
            t * 1e3, (args.seq * args.batch) as f64 / t, c * 1e3, if t > 0.0 { c / t } else { 0.0 }, traffic.0, traffic.1, peak as f64 / 1e6,
            error.map_or("null".to_string(), |e| format!("{e:.3e}")),
        ));
    };

    // forward
    let forward = || -> Result<Tensor<I, 4>, DilatedAttentionError> {
        let (out, _) = ring.try_forward_with_lse(q.clone(), k.clone(), v.clone(), None)?;
        I::sync(&device).map_err(|e| DilatedAttentionError::Unsupported {
            kind: "sync".into(),
            reason: format!("{e:?}"),
        })?;
        Ok(out)
    };
    let (times, comm, traffic, out) = measure(args, &counter, memory, forward)?;
    let peak = (memory.peak)();
    let error = match &full {
        Some([fq, fk, fv, _]) => {
            let (want, _) = dilated_attention_with_lse(fq.clone(), fk.clone(), fv.clone(), &cfg)?;
            Some(max_error(out, layout.shard(want, rank)?))
        }
        None => None,
    };
    report("forward", times, comm, traffic, peak, error);

    if args.backward {
        let weight = full.as_ref().map(|f| f[3].clone());
        let track =
            |t: &Tensor<I, 4>| Tensor::<Autodiff<I>, 4>::from_inner(t.clone()).require_grad();
        let train = || -> Result<[Tensor<I, 4>; 3], DilatedAttentionError> {
            let (qa, ka, va) = (track(&q), track(&k), track(&v));
            let out = ring_train.try_forward(qa.clone(), ka.clone(), va.clone())?;
            let loss = match &weight {
                Some(w) => (out * Tensor::from_inner(layout.shard(w.clone(), rank)?)).sum(),
                None => out.sum(),
            };
            let grads = loss.backward();
            let g = [qa, ka, va].map(|t| t.grad(&grads).expect("tracked input"));
            I::sync(&device).map_err(|e| DilatedAttentionError::Unsupported {
                kind: "sync".into(),
                reason: format!("{e:?}"),
            })?;
            Ok(g)
        };
        let (times, comm, traffic, grads) = measure(args, &counter, memory, train)?;
        let peak = (memory.peak)();
        let error = match &full {
            Some([fq, fk, fv, w]) => {
                let track_full = |t: &Tensor<I, 4>| {
                    Tensor::<Autodiff<I>, 4>::from_inner(t.clone()).require_grad()
                };
                let (qa, ka, va) = (track_full(fq), track_full(fk), track_full(fv));
                let (out, _) =
                    dilated_attention_with_lse(qa.clone(), ka.clone(), va.clone(), &cfg)?;
                let g = (out * Tensor::from_inner(w.clone())).sum().backward();
                let want = [qa, ka, va].map(|t| {
                    layout
                        .shard(t.grad(&g).expect("tracked input"), rank)
                        .expect("the global gradients have the layout's length")
                });
                Some(
                    grads
                        .into_iter()
                        .zip(want)
                        .map(|(a, b)| max_error(a, b))
                        .fold(0.0, |worst: f64, e| if e > worst { e } else { worst }),
                )
            }
            None => None,
        };
        report("forward_backward", times, comm, traffic, peak, error);
    }
    Ok(lines)
}

/// One device on the whole sequence, no communicator: the baseline, in the same JSON format.
///
/// # Errors
/// The attention's errors.
pub fn run_single<I: DilatedAttentionBackend>(
    device: &I::Device,
    args: &Args,
    backend: &str,
    memory: &MemoryProbe,
) -> Result<Vec<String>, DilatedAttentionError> {
    let cfg = args
        .config()
        .map_err(|reason| DilatedAttentionError::InvalidShards { reason })?;
    let shape = [args.batch, args.seq, args.heads, args.head_dim];
    let t = || {
        cast(
            Tensor::<I, 4>::random(shape, Distribution::Normal(0.0, 1.0), device),
            args.dtype,
        )
    };
    let (q, k, v) = (t(), t(), t());
    let sync = || {
        I::sync(device).map_err(|e| DilatedAttentionError::Unsupported {
            kind: "sync".into(),
            reason: format!("{e:?}"),
        })
    };
    let mut lines = Vec::new();
    let mut passes = vec!["forward"];
    if args.backward {
        passes.push("forward_backward");
    }
    for pass in passes {
        let step = || -> Result<(), DilatedAttentionError> {
            if pass == "forward" {
                dilated_attention_with_lse(q.clone(), k.clone(), v.clone(), &cfg)?;
            } else {
                let track = |t: &Tensor<I, 4>| {
                    Tensor::<Autodiff<I>, 4>::from_inner(t.clone()).require_grad()
                };
                let (qa, ka, va) = (track(&q), track(&k), track(&v));
                let (out, _) = dilated_attention_with_lse(qa.clone(), ka, va, &cfg)?;
                let grads = out.sum().backward();
                let _ = qa.grad(&grads);
            }
            sync()
        };
        for _ in 0..args.warmup {
            step()?;
        }
        (memory.reset)();
        let times: Vec<f64> = (0..args.repeats.max(1))
            .map(|_| {
                let start = Instant::now();
                step().map(|_| start.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        let tm = median(times);
        lines.push(format!(
            "{{\"impl\":\"single\",\"backend\":\"{backend}\",\"rank\":0,\"world\":1,\"seq\":{},\"local\":{},\"batch\":{},\"heads\":{},\"head_dim\":{},\"segments\":{:?},\"rates\":{:?},\"mode\":\"{:?}\",\"causal\":{},\"dtype\":\"{:?}\",\"pass\":\"{pass}\",\"median_ms\":{:.3},\"tokens_per_s\":{:.0},\"peak_mb\":{:.1}}}",
            args.seq, args.seq, args.batch, args.heads, args.head_dim, cfg.segment_lengths, cfg.dilation_rates, cfg.mode, cfg.causal, args.dtype,
            tm * 1e3, (args.seq * args.batch) as f64 / tm, (memory.peak)() as f64 / 1e6,
        ));
    }
    Ok(lines)
}
