//! Sequence parallelism for dilated attention: a sequence sharded across ranks (GPUs, or Burn
//! devices in one process), with outputs and gradients equal to one device's.
//!
//! - [`Communicator`]: what the algorithms need from a group of ranks; [`InProcessCommunicator`]
//!   drives several Burn devices of one process from threads.
//! - [`ShardLayout`]: which positions each rank holds (contiguous of any lengths, or zigzag).
//! - [`RingDilatedAttention`]: each rank computes its rows. Pairs whose segments fit in the
//!   shards run locally with no communication; larger segments exchange only their dilated
//!   key/value rows, step by step with a log-sum-exp merge, and the backward sends key/value
//!   gradients back to their owners.
//!
//! See [`RingDilatedAttention`] for a runnable two-rank example.

mod block;
mod communicator;
mod fused_block;
mod gradient_sync;
#[cfg(any(feature = "nccl", test))]
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
mod id_file;
mod in_process;
mod layout;
mod memory_guard;
#[cfg(feature = "nccl")]
pub mod nccl;
mod pair_results;
mod ring_attention;
mod shard_check;
mod shard_exchange;
mod shard_plan;
mod sharded_attention;
mod sharded_backward;
mod traffic;

pub use communicator::*;
pub use gradient_sync::*;
pub use in_process::*;
pub use layout::*;
pub use ring_attention::*;
pub use traffic::*;
