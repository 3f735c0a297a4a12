//! Tensor-core probe (issue 3, item 1), second kernel: the building blocks of the
//! register-resident attention kernels (`mma.sync` m16n8k16 through CubeCL's manual MMA,
//! `ldmatrix`, `cp.async` into shared stages) as a plain matmul,
//! `C[m, n] (f32) = A[m, k] (f16) x B[k, n] (f16)`, row-major. Each variant is checked against a
//! CPU product and timed; the PyTorch baseline (`benches/gpu/matmul_baseline.py`, `torch.matmul`
//! in f16) runs beside it in the same device call.
//!
//! A cube of 8 planes (32 x 8 units, 2 x 4) computes a 128 x `32 n_blocks` block of C, each plane
//! a 64 x `8 n_blocks` part (4 x `n_blocks` accumulator blocks of 16 x 8 in registers). Tiles of
//! depth 32 or 64 come in by 16-byte `cp.async` into 2 or 3 shared stages (the next tiles are
//! copied while this one is multiplied, each stage completing on its own barrier); `A` fragments
//! come out by `ldmatrix`, `B` by `ldmatrix.trans`, one 16-deep slice ahead of the products.
//! Cubes are ordered in groups of 8 block rows so that a group shares `B`'s panels in L2.
//!
//! ```text
//! cargo build --release -p dilated-attention-kernels --features test-cuda --example mma_matmul_probe
//! mma_matmul_probe 8192 7 64x2x4,64x2x8   # size, repeats, variants (depth x stages x n_blocks)
//! ```

use std::time::Instant;

use burn::tensor::f16;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cmma::{MatrixIdent, MmaDefinition};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::ir::{ElemType, FloatKind, StorageType, features::MmaConfig};
use burn_cubecl::cubecl::prelude::barrier::{Barrier, copy_async};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::cubecl::{Runtime, future};

#[path = "common/matmul_reference.rs"]
mod matmul_reference;
use matmul_reference::{cpu_product, max_abs_error};

/// Two values of one register (two halves) or of one accumulator row (two `f32`).
type Pair<E> = Vector<E, Const<2>>;

/// Rows of C per cube (its columns: `4 x 8 x n_blocks`).
const BLOCK_M: usize = 128;
/// Halves of padding per shared row: the 8 row addresses of an `ldmatrix` hit 8 distinct 4-bank
/// groups.
const PAD: usize = 8;
const PLANES: usize = 8;
const UNITS: usize = 32 * PLANES;
/// Block rows that share `B`'s panels (the cube order).
const GROUP_M: usize = 8;
/// Halves per 16-byte copy.
const WIDTH: usize = 8;

#[cube(launch_unchecked)]
fn mma_matmul<N: Size>(
    a: &Array<Vector<f16, N>>,
    b: &Array<Vector<f16, N>>,
    c: &mut Array<f32>,
    size_m: usize,
    size_n: usize,
    size_k: usize,
    #[comptime] variant: Variant,
) {
    let depth = variant.depth;
    let stages = variant.stages;
    let n_blocks = variant.n_blocks;
    let block_cols = comptime!(32 * n_blocks);
    let a_stride = comptime!(depth + PAD);
    let b_stride = comptime!(32 * n_blocks + PAD);
    let a_tile = comptime!(BLOCK_M * (depth + PAD));
    let stage_size = comptime!(BLOCK_M * (depth + PAD) + depth * (32 * n_blocks + PAD));
    let acc_pairs = comptime!(4 * n_blocks * 2);
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let blocks_m = size_m / BLOCK_M;
    let blocks_n = size_n / block_cols;
    let per_group = GROUP_M * blocks_n;
    let id = CUBE_POS_X as usize;
    let first_m = (id / per_group) * GROUP_M;
    let group_rows = min(blocks_m - first_m, GROUP_M);
    let block_m = first_m + (id % per_group) % group_rows;
    let block_n = (id % per_group) / group_rows;
    let warp_row = (plane / 4) * 64;
    let warp_col = (plane % 4) * comptime!(8 * n_blocks);

    let mut tiles = SharedMemory::<f16>::new_aligned(comptime!(stages * stage_size), 16usize);
    let barrier_0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let barrier_2 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let def = MmaDefinition::<f16, f16, f32>::new(16usize, 8usize, 16usize);

    let mut acc = Array::<Pair<f32>>::new(acc_pairs);
    #[unroll]
    for i in 0..acc_pairs {
        acc[i] = Pair::<f32>::zeroed();
    }

    // This unit's copies: 4 vectors of A (row r, vector v of 8) and 4 of B per stage.
    let a_row0 = block_m * BLOCK_M;
    let b_col0 = block_n * block_cols;
    let k_vectors = size_k / WIDTH;
    let n_vectors = size_n / WIDTH;
    let depth_tiles = size_k / depth;
    // Tiles 0 .. stages - 1 in flight before the first product.
    let place = CopyPlace {
        a_row0,
        b_col0,
        k_vectors,
        n_vectors,
        unit,
    };
    copy_stage(a, b, &mut tiles, 0usize, 0usize, &place, variant);
    barrier_0.commit_copy_async();
    if comptime!(stages == 3) {
        if depth_tiles > 1 {
            copy_stage(a, b, &mut tiles, stage_size, depth, &place, variant);
        }
        barrier_1.commit_copy_async();
    }

    // Per-lane parts of the `ldmatrix` addresses: matrix `lane / 8` of an x4 load.
    let a_lane = (lane % 8 + 8 * ((lane / 8) % 2)) * a_stride + 8 * (lane / 16);
    let b_lane = (lane % 8 + 8 * ((lane / 8) % 2)) * b_stride + 8 * (lane / 16);
    let mut stage = 0usize;
    // The stage the copies of tile + stages - 1 go into.
    let mut ahead = 1usize;
    if comptime!(stages == 3) {
        ahead = 2usize;
    }
    for tile in 0..depth_tiles {
        // Tile + stages - 1 goes into the stage the previous tile used (every plane is done
        // with it: the sync at the end of the previous iteration).
        let copied = tile + comptime!(stages - 1);
        if copied < depth_tiles {
            copy_stage(
                a,
                b,
                &mut tiles,
                ahead * stage_size,
                copied * depth,
                &place,
                variant,
            );
        }
        commit_to(&barrier_0, &barrier_1, &barrier_2, ahead);
        if stage == 0 {
            barrier_0.arrive_and_wait();
        } else if stage == 1 {
            barrier_1.arrive_and_wait();
        } else {
            barrier_2.arrive_and_wait();
        }
        let bases = FragmentBases {
            a: stage * stage_size + warp_row * a_stride + a_lane,
            b: stage * stage_size + a_tile + warp_col + b_lane,
        };
        // Fragments of 16-deep slice kb + 1 are loaded before the products of slice kb.
        let mut a_regs = Array::<Pair<f16>>::new(16usize);
        let mut b_regs = Array::<Pair<f16>>::new(comptime!(2 * n_blocks));
        load_fragments(
            &tiles,
            &def,
            &mut a_regs,
            &mut b_regs,
            &bases,
            0usize,
            variant,
        );
        #[unroll]
        for kb in 0..comptime!(depth / 16) {
            let mut a_next = Array::<Pair<f16>>::new(16usize);
            let mut b_next = Array::<Pair<f16>>::new(comptime!(2 * n_blocks));
            if comptime!(kb + 1 < depth / 16) {
                load_fragments(
                    &tiles,
                    &def,
                    &mut a_next,
                    &mut b_next,
                    &bases,
                    comptime!(kb + 1),
                    variant,
                );
            }
            #[unroll]
            for mb in 0..4usize {
                let mut a_block = Array::<Pair<f16>>::new(4usize);
                #[unroll]
                for i in 0..4usize {
                    a_block[i] = a_regs[mb * 4 + i];
                }
                #[unroll]
                for nb in 0..n_blocks {
                    let mut b_pair = Array::<Pair<f16>>::new(2usize);
                    b_pair[0] = b_regs[nb * 2];
                    b_pair[1] = b_regs[nb * 2 + 1];
                    let slot = (mb * n_blocks + nb) * 2;
                    let mut block = Array::<Pair<f32>>::new(2usize);
                    block[0] = acc[slot];
                    block[1] = acc[slot + 1];
                    def.execute_inplace(&a_block, &b_pair, &mut block);
                    acc[slot] = block[0];
                    acc[slot + 1] = block[1];
                }
            }
            if comptime!(kb + 1 < depth / 16) {
                #[unroll]
                for i in 0..16usize {
                    a_regs[i] = a_next[i];
                }
                #[unroll]
                for i in 0..comptime!(2 * n_blocks) {
                    b_regs[i] = b_next[i];
                }
            }
        }
        // Every plane is done with this stage before a later iteration copies into it.
        sync_cube();
        ahead = stage;
        stage += 1;
        if stage == stages {
            stage = 0;
        }
    }

    // Unit (g, t) holds rows g and g + 8, columns 2t and 2t + 1 of each 16 x 8 block.
    let g = lane / 4;
    let t = lane % 4;
    #[unroll]
    for mb in 0..4usize {
        #[unroll]
        for nb in 0..n_blocks {
            let row = a_row0 + warp_row + mb * 16 + g;
            let col = b_col0 + warp_col + nb * 8 + 2 * t;
            let top = acc[(mb * n_blocks + nb) * 2];
            let bottom = acc[(mb * n_blocks + nb) * 2 + 1];
            c[row * size_n + col] = top[0];
            c[row * size_n + col + 1] = top[1];
            c[(row + 8) * size_n + col] = bottom[0];
            c[(row + 8) * size_n + col + 1] = bottom[1];
        }
    }
}

/// Loads the plane's fragments of 16-deep slice `kb` of a stage: `A` (4 blocks of 16 rows, one
/// x4 `ldmatrix` each) and `B` (`n_blocks` blocks of 8 columns, one x4 `ldmatrix.trans` per two).
#[cube]
fn load_fragments(
    tiles: &SharedMemory<f16>,
    def: &MmaDefinition<f16, f16, f32>,
    a_regs: &mut Array<Pair<f16>>,
    b_regs: &mut Array<Pair<f16>>,
    bases: &FragmentBases,
    #[comptime] kb: usize,
    #[comptime] variant: Variant,
) {
    let n_blocks = variant.n_blocks;
    let a_stride = comptime!(variant.depth + PAD);
    let b_stride = comptime!(32 * n_blocks + PAD);
    let a_base = bases.a;
    let b_base = bases.b;
    #[unroll]
    for half in 0..comptime!(n_blocks / 2) {
        let at = b_base + comptime!(kb * 16 * b_stride + half * 16);
        let regs = def.load_matrix::<f16, Const<2>>(
            &tiles.slice(at, at + 8),
            MatrixIdent::B,
            4usize,
            true,
        );
        #[unroll]
        for i in 0..4usize {
            b_regs[half * 4 + i] = regs[i];
        }
    }
    #[unroll]
    for mb in 0..4usize {
        let at = a_base + comptime!(mb * 16 * a_stride + kb * 16);
        let regs = def.load_matrix::<f16, Const<2>>(
            &tiles.slice(at, at + 8),
            MatrixIdent::A,
            4usize,
            false,
        );
        #[unroll]
        for i in 0..4usize {
            a_regs[mb * 4 + i] = regs[i];
        }
    }
}

/// Commits this unit's copies issued since the last commit to stage `stage`'s barrier.
#[cube]
fn commit_to(barrier_0: &Barrier, barrier_1: &Barrier, barrier_2: &Barrier, stage: usize) {
    if stage == 0 {
        barrier_0.commit_copy_async();
    } else if stage == 1 {
        barrier_1.commit_copy_async();
    } else {
        barrier_2.commit_copy_async();
    }
}

/// Issues this unit's `cp.async` copies of one depth tile (columns `depth0..depth0 + depth` of
/// A's block rows, rows `depth0..` of B's block columns) into the stage at `base`.
#[cube]
fn copy_stage<N: Size>(
    a: &Array<Vector<f16, N>>,
    b: &Array<Vector<f16, N>>,
    tiles: &mut SharedMemory<f16>,
    base: usize,
    depth0: usize,
    place: &CopyPlace,
    #[comptime] variant: Variant,
) {
    let depth = variant.depth;
    let n_blocks = variant.n_blocks;
    let a_row0 = place.a_row0;
    let b_col0 = place.b_col0;
    let k_vectors = place.k_vectors;
    let n_vectors = place.n_vectors;
    let unit = place.unit;
    let a_per_row = comptime!(depth / WIDTH);
    let b_per_row = comptime!(32 * n_blocks / WIDTH);
    let a_stride = comptime!(depth + PAD);
    let b_stride = comptime!(32 * n_blocks + PAD);
    let a_tile = comptime!(BLOCK_M * (depth + PAD));
    #[unroll]
    for round in 0..comptime!(BLOCK_M * depth / WIDTH / UNITS) {
        let e = unit + round * UNITS;
        let r = e / a_per_row;
        let v = e % a_per_row;
        let from = (a_row0 + r) * k_vectors + depth0 / WIDTH + v;
        copy_vector(a, tiles, base + r * a_stride + v * WIDTH, from);
    }
    #[unroll]
    for round in 0..comptime!(depth * 32 * n_blocks / WIDTH / UNITS) {
        let e = unit + round * UNITS;
        let r = e / b_per_row;
        let v = e % b_per_row;
        let from = (depth0 + r) * n_vectors + b_col0 / WIDTH + v;
        copy_vector(b, tiles, base + a_tile + r * b_stride + v * WIDTH, from);
    }
}

/// Where a unit's copies of a stage come from: the cube's first row of A and first column of B,
/// the row lengths of A and B in vectors, and the unit.
#[derive(CubeType, Clone, Copy)]
struct CopyPlace {
    a_row0: usize,
    b_col0: usize,
    k_vectors: usize,
    n_vectors: usize,
    unit: usize,
}

/// This lane's first elements of A's and B's `ldmatrix` loads in the current stage.
#[derive(CubeType, Clone, Copy)]
struct FragmentBases {
    a: usize,
    b: usize,
}

/// One 16-byte `cp.async` of vector `from` of `source` to `tiles` at element `at`.
#[cube]
fn copy_vector<N: Size>(
    source: &Array<Vector<f16, N>>,
    tiles: &mut SharedMemory<f16>,
    at: usize,
    from: usize,
) {
    let mut destination = unsafe {
        tiles
            .slice_mut(at, at + WIDTH)
            .downcast_unchecked::<Vector<f16, N>>()
    };
    copy_async(
        &source.slice(from, from + 1),
        &mut destination,
        comptime!(WIDTH as u32),
    );
}

/// A kernel shape: the depth of a shared tile (32 or 64), the number of shared stages (2 or 3)
/// and the 8-column blocks of a plane (4 or 8: cubes of 128 x 128 or 128 x 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Variant {
    depth: usize,
    stages: usize,
    n_blocks: usize,
}

fn launch(
    client: &ComputeClient<CudaRuntime>,
    a: &Handle,
    b: &Handle,
    c: &Handle,
    size: usize,
    variant: Variant,
) {
    let cubes = ((size / BLOCK_M) * (size / (32 * variant.n_blocks))) as u32;
    // SAFETY: `size` is a multiple of 128, the buffers hold size x size elements (16-byte aligned
    // allocations), and the device has the manual MMA, `ldmatrix` and `cp.async` (checked in
    // `main`).
    unsafe {
        mma_matmul::launch_unchecked(
            client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_2d(32, PLANES as u32),
            WIDTH,
            ArrayArg::from_raw_parts(a.clone(), size * size / WIDTH),
            ArrayArg::from_raw_parts(b.clone(), size * size / WIDTH),
            ArrayArg::from_raw_parts(c.clone(), size * size),
            size,
            size,
            size,
            variant,
        )
    };
}

/// Deterministic values in `[-1, 1]`, multiples of 1/8 (exact in f16 and in their products).
fn fill(seed: u64, len: usize) -> Vec<f16> {
    (0..len)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed.wrapping_mul(1442695040888963407))
                >> 40;
            f16::from_f32((x % 17) as f32 / 8.0 - 1.0)
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(8192, |s| s.parse().expect("size"));
    let repeats: usize = args.next().map_or(5, |s| s.parse().expect("repeats"));
    // Variants as depth x stages x column blocks, e.g. "64x2x4,32x3x8".
    let variants: Vec<Variant> = args
        .next()
        .unwrap_or_else(|| "64x2x4,32x3x8".into())
        .split(',')
        .map(|v| {
            let parts: Vec<usize> = v.split('x').map(|p| p.parse().expect("number")).collect();
            let variant = Variant {
                depth: parts[0],
                stages: parts[1],
                n_blocks: parts[2],
            };
            assert!(
                matches!(variant.depth, 32 | 64)
                    && matches!(variant.stages, 2 | 3)
                    && matches!(variant.n_blocks, 4 | 8),
                "depth 32 or 64, 2 or 3 stages, 4 or 8 column blocks"
            );
            variant
        })
        .collect();
    assert!(size.is_multiple_of(256), "size must be a multiple of 256");
    let client = CudaRuntime::client(&Default::default());
    let half: StorageType = ElemType::Float(FloatKind::F16).into();
    let wanted = MmaConfig {
        a_type: half,
        b_type: half,
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: 16,
        k: 16,
        n: 8,
    };
    let features = client.features();
    let supported = features.matmul.mma.contains(&wanted)
        && features.matmul.ldmatrix.contains(&half)
        && features.copy_async;
    println!("mma m16n8k16 f16 -> f32, ldmatrix and cp.async supported: {supported}");
    if !supported {
        std::process::exit(2);
    }

    // Inputs and the CPU reference once, for every variant: correctness on 512 x 512 x 512
    // (8 to 16 cubes, 8 or 16 depth tiles), then the timed size.
    let small = 512;
    let (small_a, small_b) = (fill(1, small * small), fill(2, small * small));
    let want = cpu_product(&small_a, &small_b, small);
    let (check_a, check_b) = (
        client.create_from_slice(f16::as_bytes(&small_a)),
        client.create_from_slice(f16::as_bytes(&small_b)),
    );
    let a = client.create_from_slice(f16::as_bytes(&fill(3, size * size)));
    let b = client.create_from_slice(f16::as_bytes(&fill(4, size * size)));
    let c = client.empty(size * size * 4);
    let sync = || future::block_on(client.sync()).expect("sync");
    for variant in variants {
        let name = format!(
            "128x{} cube, depth {}, {} stages",
            32 * variant.n_blocks,
            variant.depth,
            variant.stages
        );
        let check_c = client.empty(small * small * 4);
        launch(&client, &check_a, &check_b, &check_c, small, variant);
        let got = client.read_one_unchecked(check_c);
        let max_err = max_abs_error(f32::from_bytes(&got), &want);
        println!(
            "{{\"check\":\"mma_matmul {small}^3 vs cpu\",\"variant\":\"{name}\",\"max_abs_err\":{max_err}}}"
        );
        if max_err > 1e-3 {
            eprintln!("mma_matmul ({name}) does not match the CPU product");
            std::process::exit(1);
        }

        launch(&client, &a, &b, &c, size, variant);
        sync();
        // Each timed run is 5 launches back to back, so the host's launch cost hides.
        let launches = 5;
        let mut times = Vec::new();
        for _ in 0..repeats {
            let start = Instant::now();
            for _ in 0..launches {
                launch(&client, &a, &b, &c, size, variant);
            }
            sync();
            times.push(start.elapsed().as_secs_f64() / launches as f64);
        }
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        let tflops = 2.0 * (size as f64).powi(3) / secs / 1e12;
        println!(
            "{{\"impl\":\"mma_matmul (ours)\",\"variant\":\"{name}\",\"m=n=k\":{size},\"dtype\":\"f16->f32\",\"median_ms\":{:.3},\"tflops\":{tflops:.1},\"repeats\":{repeats},\"launches_per_run\":{launches}}}",
            secs * 1e3
        );
    }
}
