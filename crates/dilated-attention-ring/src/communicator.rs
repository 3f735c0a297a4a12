//! [`Communicator`]: what the sequence-parallel algorithms need from a group of ranks.
//!
//! A rank is one device holding one shard of the sequence. The algorithms only exchange flat
//! tensors: point to point with ring neighbours (or any peer), all-gather, and all-reduce for
//! the gradients of replicated parameters. Two implementations: [`InProcessCommunicator`]
//! (several Burn devices of one process, driven from threads) and, with the `nccl` feature, NCCL
//! between GPUs.
//!
//! [`InProcessCommunicator`]: crate::InProcessCommunicator

use core::fmt::Debug;

use burn::tensor::{DType, Device, Tensor, backend::Backend};
use dilated_attention_core::Result;

/// A group of ranks that exchange tensors; one value per rank.
///
/// Every call is collective over the ranks it names: each rank must make the same calls in the
/// same order (SPMD). A rank that waits longer than the communicator's timeout returns
/// [`CommunicationTimeout`](dilated_attention_core::DilatedAttentionError::CommunicationTimeout),
/// and a peer that is gone gives
/// [`Communication`](dilated_attention_core::DilatedAttentionError::Communication): never a hang.
pub trait Communicator<B: Backend>: Send + Sync + Debug {
    /// This rank, in `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// The device this rank computes on.
    fn device(&self) -> &Device<B>;

    /// Sends `send` (if any) to rank `to` and receives `recv` (if any): a tensor from rank
    /// `recv.from` of `recv.len` elements of `recv.dtype`, in one step that cannot deadlock when
    /// every rank calls it with a matching schedule (rank `a` sending to `b` while `b` receives
    /// from `a`).
    ///
    /// # Errors
    /// A failed or timed-out transfer, or a received length or dtype other than announced.
    fn exchange(
        &self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Option<Tensor<B, 1>>>;

    /// Starts [`Self::exchange`] and returns before the transfer completes where the
    /// communicator can, so that the caller queues compute while it runs; the returned
    /// [`PendingExchange::finish`] waits for it and gives what it received. NCCL runs the
    /// transfer on its own stream; the in-process communicator sends now (its sends are buffered)
    /// and receives in `finish`. Default: the whole exchange, before returning.
    ///
    /// At most one exchange may be pending on a communicator, and it must be finished before
    /// any other call on it (every rank starts and finishes it at the same point of its
    /// schedule, as with `exchange`).
    ///
    /// # Errors
    /// As [`Self::exchange`], here or from `finish`.
    fn start_exchange<'a>(
        &'a self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Box<dyn PendingExchange<B> + 'a>> {
        Ok(Box::new(CompletedExchange(self.exchange(send, recv)?)))
    }

    /// Every rank's `tensor`, in rank order (lengths may differ between ranks).
    ///
    /// # Errors
    /// A failed or timed-out transfer.
    fn all_gather(&self, tensor: Tensor<B, 1>) -> Result<Vec<Tensor<B, 1>>>;

    /// The element-wise sum of every rank's `tensor` (same length on every rank).
    ///
    /// # Errors
    /// A failed or timed-out transfer, or ranks with different lengths.
    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>>;
}

/// What an [`Communicator::exchange`] receives: from which rank, how many elements, which dtype
/// (the receiver must know it: NCCL transfers raw bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receive {
    /// The sending rank.
    pub from: usize,
    /// Number of elements.
    pub len: usize,
    /// Element type.
    pub dtype: DType,
}

/// An exchange begun by [`Communicator::start_exchange`] and not yet waited for.
pub trait PendingExchange<B: Backend> {
    /// Waits for the transfer; what it received (`None` when it received nothing).
    ///
    /// # Errors
    /// A failed or timed-out transfer, or a received length or dtype other than announced.
    fn finish(self: Box<Self>) -> Result<Option<Tensor<B, 1>>>;
}

/// An exchange that completed as it started (the default [`Communicator::start_exchange`]).
#[derive(Debug)]
pub struct CompletedExchange<B: Backend>(pub Option<Tensor<B, 1>>);

impl<B: Backend> PendingExchange<B> for CompletedExchange<B> {
    fn finish(self: Box<Self>) -> Result<Option<Tensor<B, 1>>> {
        Ok(self.0)
    }
}
