//! The NCCL communicator (feature `nccl`): CUDA GPUs as ranks.

mod communicator;
mod cuda_buffer;

pub use communicator::*;
pub use cuda_buffer::*;
