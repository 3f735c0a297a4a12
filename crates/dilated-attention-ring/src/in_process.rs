//! [`InProcessCommunicator`]: one rank of a group of in-process ranks.

use core::fmt;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData, backend::Backend};
use dilated_attention_core::{DilatedAttentionError, Result};

use crate::{Communicator, PendingExchange, Receive};

/// How long a receive waits by default before it reports a timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// One transfer: which call sent it (to catch ranks that run different schedules) and the data.
struct Message {
    operation: &'static str,
    data: TensorData,
}

/// One rank of a group of in-process ranks: Burn devices of one process, driven from threads.
///
/// Each ordered pair of ranks has its own channel; a transfer moves the tensor's data through
/// host memory (`into_data` on the sender, `from_data` on the receiver's device), so any Burn
/// backend works, including several "devices" of the CPU backend (how CI tests the algorithms
/// with 2, 3 and 4 ranks). Sends never block; receives wait at most the timeout.
///
/// ```
/// use std::thread;
/// use burn::backend::NdArray;
/// use burn::tensor::{Tensor, TensorData};
/// use dilated_attention_ring::{Communicator, InProcessCommunicator};
///
/// let ranks = InProcessCommunicator::<NdArray>::group(vec![Default::default(); 3]);
/// let sums: Vec<Vec<f32>> = thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .iter()
///         .map(|comm| {
///             s.spawn(move || {
///                 let mine = Tensor::<NdArray, 1>::from_data(
///                     TensorData::from([comm.rank() as f32, 1.0]),
///                     comm.device(),
///                 );
///                 comm.all_reduce_sum(mine).unwrap().into_data().to_vec().unwrap()
///             })
///         })
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert!(sums.iter().all(|s| s == &vec![3.0, 3.0]));
/// ```
pub struct InProcessCommunicator<B: Backend> {
    rank: usize,
    device: Device<B>,
    /// `to_peer[p]`: the channel to rank `p` (`None` for this rank).
    to_peer: Vec<Option<Sender<Message>>>,
    /// `from_peer[p]`: the channel from rank `p` (`None` for this rank).
    from_peer: Vec<Option<Mutex<Receiver<Message>>>>,
    timeout: Duration,
}

impl<B: Backend> fmt::Debug for InProcessCommunicator<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessCommunicator")
            .field("rank", &self.rank)
            .field("world_size", &self.to_peer.len())
            .field("device", &self.device)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<B: Backend> InProcessCommunicator<B> {
    /// One communicator per device, rank `i` on `devices[i]`, with [`DEFAULT_TIMEOUT`]. Hand
    /// each to the thread that drives its device.
    pub fn group(devices: Vec<Device<B>>) -> Vec<Self> {
        Self::group_with_timeout(devices, DEFAULT_TIMEOUT)
    }

    /// [`Self::group`] with a receive timeout.
    pub fn group_with_timeout(devices: Vec<Device<B>>, timeout: Duration) -> Vec<Self> {
        let world = devices.len();
        let mut to_peer: Vec<Vec<Option<Sender<Message>>>> = (0..world)
            .map(|_| (0..world).map(|_| None).collect())
            .collect();
        let mut from_peer: Vec<Vec<Option<Mutex<Receiver<Message>>>>> = (0..world)
            .map(|_| (0..world).map(|_| None).collect())
            .collect();
        for src in 0..world {
            for dst in (0..world).filter(|&d| d != src) {
                let (tx, rx) = channel();
                to_peer[src][dst] = Some(tx);
                from_peer[dst][src] = Some(Mutex::new(rx));
            }
        }
        devices
            .into_iter()
            .zip(to_peer.into_iter().zip(from_peer))
            .enumerate()
            .map(|(rank, (device, (to_peer, from_peer)))| Self {
                rank,
                device,
                to_peer,
                from_peer,
                timeout,
            })
            .collect()
    }

    /// A group of one rank: the sharded algorithms on one device, without communication.
    pub fn solo(device: Device<B>) -> Self {
        Self::group(vec![device])
            .pop()
            .expect("a group of one device has one rank")
    }

    /// The receive timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn send(&self, to: usize, operation: &'static str, tensor: Tensor<B, 1>) -> Result<()> {
        let channel = self.peer_channel(&self.to_peer, to, operation)?;
        let message = Message {
            operation,
            data: tensor.into_data(),
        };
        channel.send(message).map_err(|_| self.gone(to, operation))
    }

    fn receive(&self, from: usize, operation: &'static str) -> Result<Tensor<B, 1>> {
        let channel = self.peer_channel(&self.from_peer, from, operation)?;
        let receiver = channel.lock().map_err(|_| self.gone(from, operation))?;
        let message = receiver
            .recv_timeout(self.timeout)
            .map_err(|error| match error {
                RecvTimeoutError::Timeout => DilatedAttentionError::CommunicationTimeout {
                    rank: self.rank,
                    peer: from,
                    operation,
                    waited_ms: self.timeout.as_millis() as u64,
                },
                RecvTimeoutError::Disconnected => self.gone(from, operation),
            })?;
        if message.operation != operation {
            return Err(DilatedAttentionError::Communication {
                rank: self.rank,
                peer: from,
                operation,
                reason: format!(
                    "the peer sent for `{}`: the ranks run different schedules",
                    message.operation
                ),
            });
        }
        let dtype = message.data.dtype;
        Ok(Tensor::from_data(message.data, (&self.device, dtype)))
    }

    fn peer_channel<'a, T>(
        &self,
        channels: &'a [Option<T>],
        peer: usize,
        operation: &'static str,
    ) -> Result<&'a T> {
        channels.get(peer).and_then(Option::as_ref).ok_or_else(|| {
            DilatedAttentionError::Communication {
                rank: self.rank,
                peer,
                operation,
                reason: format!(
                    "no such peer: the group has ranks 0..{} and a rank does not send to itself",
                    self.to_peer.len()
                ),
            }
        })
    }

    fn gone(&self, peer: usize, operation: &'static str) -> DilatedAttentionError {
        DilatedAttentionError::Communication {
            rank: self.rank,
            peer,
            operation,
            reason: "the peer is gone (its communicator was dropped: it failed or returned)".into(),
        }
    }
}

impl<B: Backend> Communicator<B> for InProcessCommunicator<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.to_peer.len()
    }

    fn device(&self) -> &Device<B> {
        &self.device
    }

    /// Sends now (the channel buffers it) and receives in `finish`.
    fn start_exchange<'a>(
        &'a self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Box<dyn PendingExchange<B> + 'a>> {
        if let Some((to, tensor)) = send {
            self.send(to, "exchange", tensor)?;
        }
        Ok(Box::new(BufferedExchange {
            communicator: self,
            recv,
        }))
    }

    fn exchange(
        &self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Option<Tensor<B, 1>>> {
        const OPERATION: &str = "exchange";
        if let Some((to, tensor)) = send {
            self.send(to, OPERATION, tensor)?;
        }
        let Some(Receive { from, len, dtype }) = recv else {
            return Ok(None);
        };
        let tensor = self.receive(from, OPERATION)?;
        let (got, got_dtype) = (tensor.dims()[0], tensor.dtype());
        if got != len || got_dtype != dtype {
            return Err(DilatedAttentionError::Communication {
                rank: self.rank,
                peer: from,
                operation: OPERATION,
                reason: format!(
                    "expected {len} elements of {dtype:?}, received {got} of {got_dtype:?}"
                ),
            });
        }
        Ok(Some(tensor))
    }

    fn all_gather(&self, tensor: Tensor<B, 1>) -> Result<Vec<Tensor<B, 1>>> {
        const OPERATION: &str = "all_gather";
        let world = self.world_size();
        for peer in (0..world).filter(|&p| p != self.rank) {
            self.send(peer, OPERATION, tensor.clone())?;
        }
        (0..world)
            .map(|peer| {
                if peer == self.rank {
                    Ok(tensor.clone())
                } else {
                    self.receive(peer, OPERATION)
                }
            })
            .collect()
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let len = tensor.dims()[0];
        let parts = self.all_gather(tensor)?;
        let mut sum: Option<Tensor<B, 1>> = None;
        for (peer, part) in parts.into_iter().enumerate() {
            if part.dims()[0] != len {
                return Err(DilatedAttentionError::Communication {
                    rank: self.rank,
                    peer,
                    operation: "all_reduce_sum",
                    reason: format!("length {} differs from this rank's {len}", part.dims()[0]),
                });
            }
            sum = Some(match sum {
                Some(acc) => acc + part,
                None => part,
            });
        }
        Ok(sum.expect("a group has at least this rank"))
    }
}

/// An in-process exchange whose send went out: `finish` receives.
struct BufferedExchange<'a, B: Backend> {
    communicator: &'a InProcessCommunicator<B>,
    recv: Option<Receive>,
}

impl<B: Backend> PendingExchange<B> for BufferedExchange<'_, B> {
    fn finish(self: Box<Self>) -> Result<Option<Tensor<B, 1>>> {
        self.communicator.exchange(None, self.recv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use std::thread;

    type B = NdArray;

    fn receive(from: usize, len: usize) -> Receive {
        Receive {
            from,
            len,
            dtype: burn::tensor::DType::F32,
        }
    }

    fn tensor(values: &[f32], comm: &InProcessCommunicator<B>) -> Tensor<B, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            comm.device(),
        )
    }

    #[test]
    fn ring_exchange_passes_each_rank_its_left_neighbours_tensor() {
        let ranks = InProcessCommunicator::<B>::group(vec![Default::default(); 4]);
        thread::scope(|s| {
            for comm in &ranks {
                s.spawn(move || {
                    let (me, world) = (comm.rank(), comm.world_size());
                    let left = (me + world - 1) % world;
                    let got = comm
                        .exchange(
                            Some(((me + 1) % world, tensor(&[me as f32; 3], comm))),
                            Some(receive(left, 3)),
                        )
                        .unwrap()
                        .unwrap();
                    assert_eq!(
                        got.into_data().to_vec::<f32>().unwrap(),
                        vec![left as f32; 3]
                    );
                });
            }
        });
    }

    #[test]
    fn all_gather_keeps_rank_order_and_uneven_lengths() {
        let ranks = InProcessCommunicator::<B>::group(vec![Default::default(); 3]);
        thread::scope(|s| {
            for comm in &ranks {
                s.spawn(move || {
                    let mine: Vec<f32> = (0..=comm.rank()).map(|i| i as f32).collect();
                    let all = comm.all_gather(tensor(&mine, comm)).unwrap();
                    for (peer, part) in all.into_iter().enumerate() {
                        let want: Vec<f32> = (0..=peer).map(|i| i as f32).collect();
                        assert_eq!(part.into_data().to_vec::<f32>().unwrap(), want);
                    }
                });
            }
        });
    }

    #[test]
    fn a_dropped_peer_is_an_error_not_a_hang() {
        let mut ranks = InProcessCommunicator::<B>::group(vec![Default::default(); 2]);
        drop(ranks.pop());
        let err = ranks[0].exchange(None, Some(receive(1, 4))).unwrap_err();
        assert!(
            matches!(err, DilatedAttentionError::Communication { peer: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_silent_peer_times_out() {
        let ranks = InProcessCommunicator::<B>::group_with_timeout(
            vec![Default::default(); 2],
            Duration::from_millis(50),
        );
        let err = ranks[0].exchange(None, Some(receive(1, 4))).unwrap_err();
        assert!(
            matches!(
                err,
                DilatedAttentionError::CommunicationTimeout {
                    rank: 0,
                    peer: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_length_and_mismatched_schedules_are_errors() {
        let ranks = InProcessCommunicator::<B>::group(vec![Default::default(); 2]);
        ranks[1]
            .exchange(Some((0, tensor(&[1.0, 2.0], &ranks[1]))), None)
            .unwrap();
        let err = ranks[0].exchange(None, Some(receive(1, 3))).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected 3 elements of F32, received 2 of F32"),
            "{err}"
        );
        // rank 1 sends for all_gather while rank 0 expects an exchange
        let _ = ranks[1].send(0, "all_gather", tensor(&[1.0], &ranks[1]));
        let err = ranks[0].exchange(None, Some(receive(1, 1))).unwrap_err();
        assert!(err.to_string().contains("different schedules"), "{err}");
    }
}
