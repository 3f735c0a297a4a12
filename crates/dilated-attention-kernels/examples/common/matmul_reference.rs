//! The CPU reference of the matmul probes (`cmma_matmul_probe`, `mma_matmul_probe`): the exact
//! product of row-major `f16` matrices and the largest difference from a device's result.

use burn::tensor::f16;

/// `A B` for `size x size` row-major `a` and `b`, summed in `f32` (exact for inputs that are
/// multiples of 1/8 in `[-1, 1]` at the probes' sizes).
pub fn cpu_product(a: &[f16], b: &[f16], size: usize) -> Vec<f32> {
    let mut c = vec![0f32; size * size];
    for i in 0..size {
        for j in 0..size {
            c[i * size + j] = (0..size)
                .map(|l| a[i * size + l].to_f32() * b[l * size + j].to_f32())
                .sum();
        }
    }
    c
}

/// The largest absolute difference between `got` and `want`; infinite on a NaN or an infinity
/// on either side (so no bound passes it).
pub fn max_abs_error(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, |worst: f32, error| {
            if error.is_finite() {
                worst.max(error)
            } else {
                f32::INFINITY
            }
        })
}
