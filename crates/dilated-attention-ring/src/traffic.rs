//! [`TrafficCounter`]: counts the traffic of the communicator it wraps.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, backend::Backend};
use dilated_attention_core::Result;

use crate::{Communicator, PendingExchange, Receive};

/// Totals of one rank since the counter was made (or last reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    /// Bytes this rank sent to other ranks.
    pub bytes_sent: u64,
    /// Bytes this rank received from other ranks.
    pub bytes_received: u64,
    /// Calls made (exchange, all-gather, all-reduce).
    pub calls: u64,
    /// Wall time inside those calls.
    pub time: Duration,
}

/// A [`Communicator`] wrapper that counts what a rank sends and receives and
/// how long it spends in transfers, for the traffic and communication-share numbers.
///
/// ```
/// use std::sync::Arc;
/// use burn::backend::NdArray;
/// use dilated_attention_ring::{Communicator, InProcessCommunicator, TrafficCounter};
///
/// let solo = TrafficCounter::new(Arc::new(InProcessCommunicator::<NdArray>::solo(Default::default())));
/// assert_eq!(solo.rank(), 0);
/// assert_eq!(solo.totals().bytes_received, 0);
/// ```
#[derive(Debug)]
pub struct TrafficCounter<B: Backend> {
    inner: Arc<dyn Communicator<B>>,
    totals: Mutex<TrafficTotals>,
}

impl<B: Backend> TrafficCounter<B> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Communicator<B>>) -> Self {
        Self {
            inner,
            totals: Mutex::new(TrafficTotals::default()),
        }
    }

    /// The totals so far.
    pub fn totals(&self) -> TrafficTotals {
        *self.totals.lock().expect("traffic totals")
    }

    /// Sets the totals back to zero.
    pub fn reset(&self) {
        *self.totals.lock().expect("traffic totals") = TrafficTotals::default();
    }

    fn count(&self, sent: u64, received: u64, since: Instant) {
        self.add(sent, received, 1, since);
    }

    fn add(&self, sent: u64, received: u64, calls: u64, since: Instant) {
        let mut totals = self.totals.lock().expect("traffic totals");
        totals.bytes_sent += sent;
        totals.bytes_received += received;
        totals.calls += calls;
        totals.time += since.elapsed();
    }
}

fn bytes<B: Backend>(t: &Tensor<B, 1>) -> u64 {
    (t.dims()[0] * t.dtype().size()) as u64
}

impl<B: Backend> Communicator<B> for TrafficCounter<B> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn device(&self) -> &Device<B> {
        self.inner.device()
    }

    fn exchange(
        &self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Option<Tensor<B, 1>>> {
        let start = Instant::now();
        let sent = send.as_ref().map_or(0, |(_, t)| bytes(t));
        let received = self.inner.exchange(send, recv)?;
        self.count(sent, received.as_ref().map_or(0, bytes), start);
        Ok(received)
    }

    /// Counts the time spent starting the exchange and waiting in `finish`: with a transfer
    /// that overlaps compute, only the part the rank waits for.
    fn start_exchange<'a>(
        &'a self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Box<dyn PendingExchange<B> + 'a>> {
        let start = Instant::now();
        let sent = send.as_ref().map_or(0, |(_, t)| bytes(t));
        let pending = self.inner.start_exchange(send, recv)?;
        self.add(sent, 0, 1, start);
        Ok(Box::new(CountedExchange {
            counter: self,
            pending,
        }))
    }

    fn all_gather(&self, tensor: Tensor<B, 1>) -> Result<Vec<Tensor<B, 1>>> {
        let start = Instant::now();
        let mine = bytes(&tensor);
        let all = self.inner.all_gather(tensor)?;
        let others: u64 = all.iter().map(bytes).sum::<u64>() - mine;
        self.count(mine * (all.len() as u64 - 1), others, start);
        Ok(all)
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let start = Instant::now();
        let n = bytes(&tensor);
        let world = self.world_size() as u64;
        let out = self.inner.all_reduce_sum(tensor)?;
        // a ring all-reduce moves 2 (w - 1) / w of the buffer each way per rank
        let moved = 2 * n * (world - 1) / world.max(1);
        self.count(moved, moved, start);
        Ok(out)
    }
}

/// A counted exchange in flight: `finish` adds the received bytes and the wait.
struct CountedExchange<'a, B: Backend> {
    counter: &'a TrafficCounter<B>,
    pending: Box<dyn PendingExchange<B> + 'a>,
}

impl<B: Backend> PendingExchange<B> for CountedExchange<'_, B> {
    fn finish(self: Box<Self>) -> Result<Option<Tensor<B, 1>>> {
        let start = Instant::now();
        let received = self.pending.finish()?;
        self.counter
            .add(0, received.as_ref().map_or(0, bytes), 0, start);
        Ok(received)
    }
}
