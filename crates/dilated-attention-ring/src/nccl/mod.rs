//! The NCCL communicator (feature `nccl`): CUDA GPUs as ranks.

mod communicator;
mod cuda_buffer;
mod unique_id;

pub use crate::id_file::NCCL_RUN_ID_ENV;
pub use communicator::*;
pub use cuda_buffer::*;
pub use unique_id::NcclId;
