//! Tensor-core probe (issue 3, item 1): a small CubeCL `cmma` matmul of our own,
//! `C[m, n] (f32) = A[m, k] (f16) x B[k, n] (f16)`, row-major, checked against a CPU product and
//! timed; the PyTorch baseline (`torch.matmul` in f16) runs beside it in the same device call.
//!
//! A cube of 4 planes (32 x 4 units) computes a 64 x 64 block of C; each plane a 32 x 32 quarter
//! as 2 x 2 accumulator fragments of 16 x 16; A and B tiles of depth 32 go through shared memory.
//! No double buffering, no vectorized loads: this bounds what a plain cmma kernel reaches on this
//! stack, before the attention kernels use the same fragments.
//!
//! ```text
//! cargo build --release -p dilated-attention-kernels --features test-cuda --example cmma_matmul_probe
//! cmma_matmul_probe 8192 5
//! ```

use std::time::Instant;

use burn::tensor::f16;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::ir::{ElemType, FloatKind, features::MmaConfig};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::cubecl::{Runtime, future};

#[path = "common/matmul_reference.rs"]
mod matmul_reference;
use matmul_reference::{cpu_product, max_abs_error};

const BLOCK: usize = 64;
const DEPTH: usize = 32;

#[cube(launch_unchecked)]
fn cmma_matmul(a: &Array<f16>, b: &Array<f16>, c: &mut Array<f32>, n: usize, k: usize) {
    let plane = UNIT_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let unit = plane * 32 + lane;
    let row0 = CUBE_POS_Y as usize * 64;
    let col0 = CUBE_POS_X as usize * 64;
    let plane_row = (plane / 2) * 32;
    let plane_col = (plane % 2) * 32;
    let mut tile_a = SharedMemory::<f16>::new(2048usize);
    let mut tile_b = SharedMemory::<f16>::new(2048usize);
    let acc00 = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
    let acc01 = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
    let acc10 = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
    let acc11 = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
    for depth in 0..k / 32 {
        for i in 0..16usize {
            let e = unit + i * 128;
            tile_a[e] = a[(row0 + e / 32) * k + depth * 32 + e % 32];
            tile_b[e] = b[(depth * 32 + e / 64) * n + col0 + e % 64];
        }
        sync_cube();
        for kk in 0..2usize {
            let a0 = cmma::Matrix::<f16>::from_slice(
                cmma::MatrixIdent::A,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &tile_a.slice(plane_row * 32 + kk * 16, 2048usize),
                32u32,
            );
            let a1 = cmma::Matrix::<f16>::from_slice(
                cmma::MatrixIdent::A,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &tile_a.slice((plane_row + 16) * 32 + kk * 16, 2048usize),
                32u32,
            );
            let b0 = cmma::Matrix::<f16>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &tile_b.slice(kk * 16 * 64 + plane_col, 2048usize),
                64u32,
            );
            let b1 = cmma::Matrix::<f16>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &tile_b.slice(kk * 16 * 64 + plane_col + 16, 2048usize),
                64u32,
            );
            cmma::execute::<f16, f16, f32, f32>(&a0, &b0, &acc00, &acc00);
            cmma::execute::<f16, f16, f32, f32>(&a0, &b1, &acc01, &acc01);
            cmma::execute::<f16, f16, f32, f32>(&a1, &b0, &acc10, &acc10);
            cmma::execute::<f16, f16, f32, f32>(&a1, &b1, &acc11, &acc11);
        }
        sync_cube();
    }
    let total = c.len();
    let stride = n as u32;
    let base = (row0 + plane_row) * n + col0 + plane_col;
    cmma::store(
        &mut c.slice_mut(base, total),
        &acc00,
        stride,
        cmma::MatrixLayout::RowMajor,
    );
    cmma::store(
        &mut c.slice_mut(base + 16, total),
        &acc01,
        stride,
        cmma::MatrixLayout::RowMajor,
    );
    cmma::store(
        &mut c.slice_mut(base + 16 * n, total),
        &acc10,
        stride,
        cmma::MatrixLayout::RowMajor,
    );
    cmma::store(
        &mut c.slice_mut(base + 16 * n + 16, total),
        &acc11,
        stride,
        cmma::MatrixLayout::RowMajor,
    );
}

fn launch(client: &ComputeClient<CudaRuntime>, a: &Handle, b: &Handle, c: &Handle, size: usize) {
    let blocks = (size / BLOCK) as u32;
    // SAFETY: `size` is a multiple of 64 and the buffers hold size x size elements.
    unsafe {
        cmma_matmul::launch_unchecked(
            client,
            CubeCount::Static(blocks, blocks, 1),
            CubeDim::new_2d(32, 4),
            ArrayArg::from_raw_parts(a.clone(), size * size),
            ArrayArg::from_raw_parts(b.clone(), size * size),
            ArrayArg::from_raw_parts(c.clone(), size * size),
            size,
            size,
        )
    };
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(8192, |s| s.parse().expect("size"));
    let repeats: usize = args.next().map_or(5, |s| s.parse().expect("repeats"));
    assert!(size.is_multiple_of(BLOCK) && size.is_multiple_of(DEPTH));
    let client = CudaRuntime::client(&Default::default());
    let wanted = MmaConfig {
        a_type: ElemType::Float(FloatKind::F16).into(),
        b_type: ElemType::Float(FloatKind::F16).into(),
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: 16,
        k: 16,
        n: 16,
    };
    println!(
        "cmma f16 16x16x16 -> f32 supported: {}",
        client.features().matmul.cmma.contains(&wanted)
    );

    // Correctness on 256^3 against a CPU product.
    let small = 256;
    let fill = |seed: u64, len: usize| -> Vec<f16> {
        (0..len)
            .map(|i| {
                let x = (i as u64)
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(seed)
                    >> 40;
                f16::from_f32((x % 17) as f32 / 8.0 - 1.0)
            })
            .collect()
    };
    let (ha, hb) = (fill(1, small * small), fill(2, small * small));
    let a = client.create_from_slice(f16::as_bytes(&ha));
    let b = client.create_from_slice(f16::as_bytes(&hb));
    let c = client.empty(small * small * 4);
    launch(&client, &a, &b, &c, small);
    let got = client.read_one_unchecked(c);
    let max_err = max_abs_error(f32::from_bytes(&got), &cpu_product(&ha, &hb, small));
    println!("{{\"check\":\"cmma_matmul 256^3 vs cpu\",\"max_abs_err\":{max_err}}}");

    let (ha, hb) = (fill(3, size * size), fill(4, size * size));
    let a = client.create_from_slice(f16::as_bytes(&ha));
    let b = client.create_from_slice(f16::as_bytes(&hb));
    let c = client.empty(size * size * 4);
    let sync = || future::block_on(client.sync()).expect("sync");
    launch(&client, &a, &b, &c, size);
    sync();
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        launch(&client, &a, &b, &c, size);
        sync();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let secs = times[times.len() / 2];
    let tflops = 2.0 * (size as f64).powi(3) / secs / 1e12;
    println!(
        "{{\"impl\":\"cmma_matmul (ours)\",\"m=n=k\":{size},\"dtype\":\"f16->f32\",\"median_ms\":{:.3},\"tflops\":{tflops:.1},\"repeats\":{repeats}}}",
        secs * 1e3
    );
}
