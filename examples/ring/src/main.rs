//! `ring`: sequence-parallel dilated attention on several ranks, checked against one device and
//! measured (one JSON line per rank and pass).
//!
//! ```text
//! # CPU: 2 in-process ranks (NdArray devices on threads), a segment over both shards
//! cargo run --release -p ring_launcher -- --ranks 2 --seq 8192 --segments 2048,seq --rates 1,8 --check --backward
//! # GPUs: one process per GPU over NCCL (torchrun-style env, set by --launch)
//! cargo build --release -p ring_launcher --features cuda
//! ring --launch 2 --seq 2097152 --dtype bf16 --backward
//! ring --single --device cuda --seq 1048576 --dtype bf16 --backward   # the one-GPU baseline
//! ```

mod args;
mod peak_memory;
mod run;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use burn::backend::NdArray;
use clap::Parser;
use dilated_attention::{Communicator, InProcessCommunicator};

use crate::args::Args;
use crate::run::{MemoryProbe, run_rank, run_single};

#[global_allocator]
static ALLOCATOR: peak_memory::PeakTracking = peak_memory::PeakTracking;

const CPU_MEMORY: MemoryProbe<'static> = MemoryProbe {
    peak: &|| peak_memory::peak_bytes() as u64,
    reset: &peak_memory::reset_peak,
};

/// Set by the panic hook: some thread panicked. CubeCL's device thread catches a failed task's
/// panic (an allocation that did not fit, a faulting kernel) and goes on, so a run can finish
/// and print times over results that are wrong; such a run reports an error instead.
static A_THREAD_PANICKED: AtomicBool = AtomicBool::new(false);

fn print(result: Result<Vec<String>, dilated_attention::DilatedAttentionError>) -> bool {
    if A_THREAD_PANICKED.load(Ordering::SeqCst) {
        eprintln!(
            "error: a thread panicked during the run (CubeCL's device thread logs it above as a \
             failed task); its numbers are not reported"
        );
        return false;
    }
    match result {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            true
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

fn main() -> ExitCode {
    // Burn's and CubeCL's `log` records on stderr (`RUST_LOG`, default `warn`): CubeCL's device
    // thread catches a failed task's panic and only logs it, so without a logger the first
    // failure of a long run is lost and only its knock-on panics show.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        A_THREAD_PANICKED.store(true, Ordering::SeqCst);
        default_hook(info);
    }));
    let args = Args::parse();
    #[cfg(feature = "cuda")]
    {
        if let Some(ranks) = args.launch {
            return gpu::launch(ranks);
        }
        if let Some(seconds) = args.init_timeout_probe {
            return gpu::init_timeout_probe(seconds);
        }
        if args.nccl {
            return gpu::nccl_rank(&args);
        }
        if args.single && args.device == args::DeviceKind::Cuda {
            return gpu::single(&args);
        }
    }
    // NdArray computes in f32 only
    if args.dtype != args::Precision::F32 {
        eprintln!("error: the CPU backend (NdArray) runs f32 only; --dtype needs the CUDA build");
        return ExitCode::FAILURE;
    }
    if args.single {
        let ok = print(run_single::<NdArray>(
            &Default::default(),
            &args,
            "ndarray",
            &CPU_MEMORY,
        ));
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let ranks = InProcessCommunicator::<NdArray>::group(vec![Default::default(); args.ranks]);
    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                let args = &args;
                s.spawn(move || {
                    let comm: Arc<dyn Communicator<NdArray>> = Arc::new(comm);
                    let mut lines = Vec::new();
                    // NdArray computes in f32 only: the suite's half-precision runs need CUDA
                    for run in args
                        .runs()
                        .into_iter()
                        .filter(|r| r.dtype == args::Precision::F32)
                    {
                        lines.extend(run_rank::<NdArray>(
                            comm.clone(),
                            &run,
                            "ndarray",
                            &CPU_MEMORY,
                        )?);
                    }
                    Ok(lines)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    });
    let ok = results.into_iter().map(print).fold(true, |a, b| a & b);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    //! The CUDA modes: NCCL ranks, the launcher, the one-GPU baseline.

    use std::process::{Command, ExitCode};
    use std::sync::Arc;

    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    use burn_cubecl::cubecl::Runtime;
    use burn_cubecl::cubecl::cuda::CudaRuntime;
    use dilated_attention::Communicator;
    use dilated_attention_ring::nccl::NcclCommunicator;

    use crate::args::Args;
    use crate::run::{MemoryProbe, run_rank, run_single};

    fn reserved(device: &CudaDevice) -> u64 {
        CudaRuntime::client(device)
            .memory_usage()
            .map(|u| u.bytes_reserved)
            .unwrap_or(0)
    }

    /// Rank 0 of a group of 2 whose rank 1 never comes: the init must give up after `seconds`
    /// with a `CommunicationTimeout`. One JSON line; success when it did, within 5 s of the limit.
    pub fn init_timeout_probe(seconds: u64) -> ExitCode {
        use dilated_attention::DilatedAttentionError;
        use dilated_attention_ring::nccl::NcclId;
        let limit = std::time::Duration::from_secs(seconds);
        let start = std::time::Instant::now();
        let result = NcclId::new().and_then(|id| {
            NcclCommunicator::<Cuda>::new_within(CudaDevice::new(0), 0, 2, id, limit)
        });
        let elapsed = start.elapsed().as_secs_f64();
        let ok = matches!(
            result,
            Err(DilatedAttentionError::CommunicationTimeout { .. })
        ) && elapsed >= seconds as f64
            && elapsed < seconds as f64 + 5.0;
        let outcome = match result {
            Ok(_) => "Ok (a group of one rank formed?)".to_string(),
            Err(e) => format!("error: {e}"),
        };
        println!(
            "{{\"case\":\"NCCL init with a peer that never joins\",\"limit_s\":{seconds},\"elapsed_s\":{elapsed:.2},\"result\":{outcome:?},\"pass\":{ok}}}"
        );
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// This process as NCCL rank `RANK` of `WORLD_SIZE`, on GPU `LOCAL_RANK`.
    pub fn nccl_rank(args: &Args) -> ExitCode {
        let comm = match NcclCommunicator::<Cuda>::from_env(CudaDevice::new) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let device = comm.device().clone();
        let peak = move || reserved(&device);
        let memory = MemoryProbe {
            peak: &peak,
            reset: &|| {},
        };
        let comm: Arc<dyn Communicator<Cuda>> = Arc::new(comm);
        let mut ok = true;
        for run in args.runs() {
            // print as we go: a long run shows progress
            ok &= crate::print(run_rank::<Cuda>(comm.clone(), &run, "cuda-nccl", &memory));
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// One GPU, the whole sequence.
    pub fn single(args: &Args) -> ExitCode {
        let device = CudaDevice::new(0);
        let dev = device.clone();
        let peak = move || reserved(&dev);
        let memory = MemoryProbe {
            peak: &peak,
            reset: &|| {},
        };
        if crate::print(run_single::<Cuda>(&device, args, "cuda", &memory)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// Starts `ranks` copies of this binary with `--nccl`, one per GPU, and waits for them.
    pub fn launch(ranks: usize) -> ExitCode {
        let exe = std::env::current_exe().expect("the path of this binary");
        let mut forwarded: Vec<String> = Vec::new();
        let mut skip = false;
        for a in std::env::args().skip(1) {
            if skip {
                skip = false;
                continue;
            }
            if a == "--launch" {
                skip = true;
                continue;
            }
            if a.starts_with("--launch=") {
                continue;
            }
            forwarded.push(a);
        }
        let port = std::env::var("MASTER_PORT")
            .unwrap_or_else(|_| (29500 + std::process::id() % 1000).to_string());
        let children: Vec<_> = (0..ranks)
            .map(|rank| {
                Command::new(&exe)
                    .args(&forwarded)
                    .arg("--nccl")
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", ranks.to_string())
                    .env("LOCAL_RANK", rank.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", &port)
                    .spawn()
                    .expect("starting a rank process")
            })
            .collect();
        let ok = children
            .into_iter()
            .map(|mut c| c.wait().map(|s| s.success()).unwrap_or(false))
            .fold(true, |a, b| a & b);
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
