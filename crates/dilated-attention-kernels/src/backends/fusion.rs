//! `Fusion<B>` (the default `Cuda` and `Wgpu` backend types): the reference path on fused ops.
//! The fused kernels will be registered here as a custom fusion operation (burn-vision 0.21's
//! `backends/cube/ops.rs` shows the pattern), since otherwise the default backend never reaches
//! them.

use burn_fusion::{Fusion, FusionBackend};

use crate::DilatedAttentionBackend;

impl<B: FusionBackend + DilatedAttentionBackend> DilatedAttentionBackend for Fusion<B> {}
