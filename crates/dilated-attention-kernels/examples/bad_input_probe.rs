//! What bad input does to a process through the public API on burn's default GPU backend
//! (`Cuda` with `test-cuda`, `Wgpu` with `test-wgpu`): each case makes one call, reports what
//! came back (a value, a typed error, or a panic), then runs a small valid call and reads its
//! result, to show whether the device still works afterwards. One JSON line per case.
//!
//! ```text
//! cargo build --release -p dilated-attention-kernels --features test-cuda --example bad_input_probe
//! target/release/examples/bad_input_probe
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{DType, Distribution, Tensor};
use dilated_attention_core::compare::relative_l2_error;
use dilated_attention_core::{DilatedAttentionConfig, KernelStrategy};
use dilated_attention_kernels::{dilated_attention_with_lse, kernel_choice};

#[cfg(feature = "test-cuda")]
type Probe = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type Probe = burn::backend::Wgpu;
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
compile_error!("bad_input_probe needs the `test-wgpu` or the `test-cuda` feature (the backend)");

/// The half dtype of the backend (WGSL has no bf16).
fn half() -> DType {
    if cfg!(feature = "test-cuda") {
        DType::BF16
    } else {
        DType::F16
    }
}

fn random(dims: [usize; 4], dtype: DType) -> Tensor<Probe, 4> {
    Tensor::<Probe, 4>::random(dims, Distribution::Normal(0.0, 1.0), &Default::default())
        .cast(dtype)
}

/// `||a - b|| / ||b||` over the values as `f32` ([`relative_l2_error`]: infinite on NaN or Inf).
fn relative_l2(a: Tensor<Probe, 4>, b: Tensor<Probe, 4>) -> f64 {
    let a: Vec<f32> = a.cast(DType::F32).into_data().to_vec().expect("f32 values");
    let b: Vec<f32> = b.cast(DType::F32).into_data().to_vec().expect("f32 values");
    relative_l2_error(&a, &b)
}

/// A small valid call, read back: whether the device still works.
fn healthy() -> String {
    let outcome = catch_unwind(|| {
        let q = random([1, 256, 2, 32], DType::F32);
        let cfg = DilatedAttentionConfig::new(vec![64], vec![1]);
        let (out, _) = dilated_attention_with_lse(q.clone(), q.clone(), q, &cfg)?;
        let values: Vec<f32> = out.into_data().to_vec().expect("f32 values");
        Ok::<bool, dilated_attention_core::DilatedAttentionError>(
            values.iter().all(|x| x.is_finite()),
        )
    });
    match outcome {
        Ok(Ok(true)) => "ok".into(),
        Ok(Ok(false)) => "non-finite output".into(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(panic) => format!("panic: {}", panic_message(&panic)),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(not a string)".into())
}

fn report(case: &str, outcome: std::thread::Result<String>) {
    let result = match outcome {
        Ok(text) => text,
        Err(panic) => format!("panic: {}", panic_message(&panic)),
    };
    let after = healthy();
    println!("{{\"case\":{case:?},\"result\":{result:?},\"valid_call_after\":{after:?}}}");
}

fn main() {
    let h = half();
    println!(
        "{{\"backend\":{:?},\"half\":\"{h:?}\"}}",
        std::any::type_name::<Probe>()
    );
    report("healthy at start", Ok(healthy()));

    report(
        "q and v half, k f32",
        catch_unwind(|| {
            let cfg = DilatedAttentionConfig::new(vec![64], vec![1]);
            let (q, k) = (
                random([1, 256, 2, 32], h),
                random([1, 256, 2, 32], DType::F32),
            );
            match dilated_attention_with_lse(q.clone(), k, q, &cfg) {
                Ok((out, _)) => format!("Ok, output finite: {}", {
                    let v: Vec<f32> = out.cast(DType::F32).into_data().to_vec().unwrap();
                    v.iter().all(|x| x.is_finite())
                }),
                Err(e) => format!("error: {e}"),
            }
        }),
    );

    report(
        "head_dim 320 in half (reference path)",
        catch_unwind(AssertUnwindSafe(|| {
            let cfg = DilatedAttentionConfig::new(vec![128, 256], vec![1, 2]).with_causal(true);
            let q = random([1, 512, 2, 320], h);
            let (k, v) = (random([1, 512, 2, 320], h), random([1, 512, 2, 320], h));
            match dilated_attention_with_lse(q.clone(), k.clone(), v.clone(), &cfg) {
                Ok((out, _)) => {
                    let f32_cfg = cfg.clone().with_kernel_strategy(KernelStrategy::Reference);
                    let up = |t: Tensor<Probe, 4>| t.cast(DType::F32);
                    let (want, _) = dilated_attention_with_lse(up(q), up(k), up(v), &f32_cfg)
                        .expect("the f32 reference");
                    format!(
                        "Ok, dtype {:?}, rel L2 against f32 on the same inputs {:.2e}",
                        out.dtype(),
                        relative_l2(out, want)
                    )
                }
                Err(e) => format!("error: {e}"),
            }
        })),
    );

    report(
        "reference path with one 65,536-row segment (scores beyond one allocation)",
        catch_unwind(|| {
            let cfg = DilatedAttentionConfig::new(vec![65_536], vec![1])
                .with_kernel_strategy(KernelStrategy::Reference);
            let q = random([1, 65_536, 8, 64], h);
            match dilated_attention_with_lse(q.clone(), q.clone(), q, &cfg) {
                Ok((out, _)) => format!("Ok, dims {:?}", out.dims()),
                Err(e) => format!("error: {e}"),
            }
        }),
    );

    report(
        "forced mma at head_dim 320",
        catch_unwind(|| {
            let cfg = DilatedAttentionConfig::new(vec![64], vec![1])
                .with_kernel_strategy(KernelStrategy::Mma);
            let q = random([1, 128, 2, 320], h);
            match dilated_attention_with_lse(q.clone(), q.clone(), q, &cfg) {
                Ok(_) => "Ok".to_string(),
                Err(e) => format!("error: {e}"),
            }
        }),
    );

    if cfg!(feature = "test-cuda") {
        report(
            "2^32 elements per tensor in half (2 batch rows of 2^31): fused, split along the batch",
            catch_unwind(|| {
                let cfg = DilatedAttentionConfig::new(vec![2048, 4096, 8192], vec![1, 2, 4]);
                let dims = [2, 1 << 20, 32, 64];
                let choice = kernel_choice::<Probe>(dims, h, &Default::default(), &cfg);
                let [q, k, v] = [0, 1, 2].map(|_| random(dims, h));
                let start = std::time::Instant::now();
                let result = dilated_attention_with_lse(q.clone(), k.clone(), v.clone(), &cfg);
                match result {
                    Ok((out, _)) => {
                        let row = |t: Tensor<Probe, 4>| t.narrow(0, 1, 1);
                        let (alone, _) = dilated_attention_with_lse(row(q), row(k), row(v), &cfg)
                            .expect("one batch row");
                        let seconds = start.elapsed().as_secs_f64();
                        // The first 65,536 tokens of row 1 (a host copy of all 2^31 would take minutes).
                        let head = |t: Tensor<Probe, 4>| t.narrow(1, 0, 1 << 16);
                        format!(
                            "Ok, kernels {choice:?}, {seconds:.2} s with the check; batch row 1 against a call on that row alone (first 65,536 tokens): rel L2 {:.2e}",
                            relative_l2(head(row(out)), head(alone))
                        )
                    }
                    Err(e) => format!("error: {e}"),
                }
            }),
        );
    }

    report(
        "segment length 0",
        catch_unwind(|| {
            let cfg = DilatedAttentionConfig::new(vec![0], vec![1]);
            let q = random([1, 128, 2, 32], h);
            match dilated_attention_with_lse(q.clone(), q.clone(), q, &cfg) {
                Ok(_) => "Ok".to_string(),
                Err(e) => format!("error: {e}"),
            }
        }),
    );
}
