//! Whether a call's kernels run before the caller's next sync, under the submission that
//! `DILATED_ATTENTION_SUBMIT` picks (`eager`, `background`, `lazy`; see the crate's
//! `SUBMIT_ENV`). Each round makes one forward call on burn's default backend (`Wgpu` with
//! `test-wgpu`, `Cuda` with `test-cuda`), waits `--wait-ms`, then syncs, and prints how long the
//! call took to return and how long the sync took: a sync of about zero means the kernels had
//! already run while the caller waited.
//!
//! ```text
//! cargo build -p dilated-attention-kernels --features test-wgpu --example submit_probe
//! for s in eager background lazy; do
//!   DILATED_ATTENTION_SUBMIT=$s target/debug/examples/submit_probe --seq 4096 --wait-ms 3000
//! done
//! ```

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use dilated_attention_core::DilatedAttentionConfig;
use dilated_attention_kernels::{SUBMIT_ENV, dilated_attention_with_lse};

#[cfg(feature = "test-cuda")]
type Probe = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type Probe = burn::backend::Wgpu;
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
compile_error!("submit_probe needs the `test-wgpu` or the `test-cuda` feature (the backend)");

fn main() {
    let mut seq = 4096;
    let mut wait_ms = 3000;
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--seq" => seq = value as usize,
            "--wait-ms" => wait_ms = value,
            "--rounds" => rounds = value,
            other => panic!("unknown flag {other}"),
        }
    }
    let submit = std::env::var(SUBMIT_ENV).unwrap_or_else(|_| "background".into());
    let device = Default::default();
    let cfg = DilatedAttentionConfig::new(vec![1024], vec![1]);
    let q = Tensor::<Probe, 4>::random([1, seq, 8, 32], Distribution::Normal(0.0, 1.0), &device);
    for round in 0..rounds {
        Probe::sync(&device).expect("sync");
        let started = Instant::now();
        let (out, lse) = dilated_attention_with_lse(q.clone(), q.clone(), q.clone(), &cfg)
            .expect("a valid call");
        let returned = started.elapsed();
        std::thread::sleep(Duration::from_millis(wait_ms));
        let started = Instant::now();
        Probe::sync(&device).expect("sync");
        let synced = started.elapsed();
        drop((out, lse));
        println!(
            "{{\"submit\":\"{submit}\",\"round\":{round},\"seq\":{seq},\"call_returned_ms\":{:.2},\"wait_ms\":{wait_ms},\"sync_after_wait_ms\":{:.2}}}",
            returned.as_secs_f64() * 1e3,
            synced.as_secs_f64() * 1e3
        );
    }
}
