//! The NCCL communicator (feature `nccl`): CUDA GPUs as ranks.

mod communicator;
mod cuda_buffer;
mod unique_id;

pub use communicator::*;
pub use cuda_buffer::*;
pub use unique_id::NcclId;
