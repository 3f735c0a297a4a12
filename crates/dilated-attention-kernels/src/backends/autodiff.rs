//! `Autodiff<B>`: the reference body runs on the autodiff backend's ops, so it records its own
//! backward. (The fused kernels will register their backward step here.)

use burn_autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};

use crate::DilatedAttentionBackend;

impl<B: DilatedAttentionBackend, C: CheckpointStrategy> DilatedAttentionBackend for Autodiff<B, C> {}
