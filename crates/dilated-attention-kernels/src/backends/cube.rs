//! `CubeBackend` (CUDA, WGPU and the other CubeCL runtimes): the reference path on the
//! backend's own ops until the fused kernels land in this file's place.

use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::DilatedAttentionBackend;

impl<R, F, I, BT> DilatedAttentionBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
}
