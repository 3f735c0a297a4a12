//! Command line of the `ring` binary.

use clap::{Parser, ValueEnum};
use dilated_attention::{DilatedAttentionConfig, DilationMode};

/// Sequence-parallel dilated attention: every rank holds `seq / ranks` tokens; prints one JSON
/// line per (rank, pass) with times, traffic, memory and (with `--check`) the error against one
/// device on the whole sequence.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Args {
    /// In-process ranks (CPU build: NdArray devices driven from threads).
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Whole sequence length (split over the ranks).
    #[arg(long, default_value_t = 16384)]
    pub seq: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Heads.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Segment lengths, comma separated; `seq` stands for the whole sequence.
    #[arg(long, value_delimiter = ',', default_value = "2048,4096,8192")]
    pub segments: Vec<String>,
    /// Dilation rates, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub rates: Vec<usize>,
    /// How heads use the pairs.
    #[arg(long, value_enum, default_value_t = Mode::Longnet)]
    pub mode: Mode,
    /// Causal masking.
    #[arg(long)]
    pub causal: bool,
    /// Zigzag shards (balanced causal work) instead of contiguous ones.
    #[arg(long)]
    pub zigzag: bool,
    /// Transfer and compute in turn (no overlap of a step's transfer with the previous step's
    /// blocks), to measure what the overlap buys.
    #[arg(long)]
    pub no_overlap: bool,
    /// Input dtype.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// Also time forward+backward.
    #[arg(long)]
    pub backward: bool,
    /// Compare outputs (and gradients with `--backward`) with one device on the whole sequence.
    #[arg(long)]
    pub check: bool,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Untimed warm-up calls.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Run the check over f32 and bf16, both modes, causal and not (8 configs, one process, so
    /// kernels compile once); implies `--check`.
    #[arg(long)]
    pub suite: bool,
    /// Run one device on the whole sequence instead of the ranks (the baseline).
    #[arg(long)]
    pub single: bool,
    /// Device of `--single`.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// CUDA build: this process is one NCCL rank (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    /// MASTER_PORT from the environment).
    #[arg(long)]
    pub nccl: bool,
    /// CUDA build: start this many processes, one per GPU, each with `--nccl`.
    #[arg(long)]
    pub launch: Option<usize>,
    /// CUDA build: join a group of 2 as rank 0 with no rank 1 and check that the NCCL init gives
    /// up after this many seconds with a `CommunicationTimeout` (one GPU).
    #[arg(long)]
    pub init_timeout_probe: Option<u64>,
}

/// [`DilationMode`] on the command line.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Mode {
    /// LongNet (merge by log-sum-exp).
    Longnet,
    /// The PyTorch library's head groups.
    HeadGrouped,
}

/// Which device `--single` runs on.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// NdArray.
    Cpu,
    /// CUDA GPU 0 (CUDA build).
    Cuda,
}

/// Input precision.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Args {
    /// The runs this invocation makes: itself, or the 8 of `--suite`.
    pub fn runs(&self) -> Vec<Args> {
        if !self.suite {
            return vec![self.clone()];
        }
        let mut runs = Vec::new();
        for dtype in [Precision::F32, Precision::Bf16] {
            for mode in [Mode::Longnet, Mode::HeadGrouped] {
                for causal in [false, true] {
                    runs.push(Args {
                        dtype,
                        mode,
                        causal,
                        check: true,
                        suite: false,
                        ..self.clone()
                    });
                }
            }
        }
        runs
    }

    /// The attention config of the run.
    pub fn config(&self) -> Result<DilatedAttentionConfig, String> {
        let segments = self
            .segments
            .iter()
            .map(|s| match s.trim() {
                "seq" => Ok(self.seq),
                other => other
                    .parse()
                    .map_err(|e| format!("--segments {other}: {e}")),
            })
            .collect::<Result<Vec<usize>, _>>()?;
        Ok(DilatedAttentionConfig::new(segments, self.rates.clone())
            .with_mode(match self.mode {
                Mode::Longnet => DilationMode::LongNet,
                Mode::HeadGrouped => DilationMode::HeadGrouped,
            })
            .with_causal(self.causal))
    }
}
