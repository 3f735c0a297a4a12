//! [`NcclCommunicator`]: ranks that are CUDA GPUs, in one process or one process per GPU
//! (possibly on several machines), over NCCL through cudarc (libnccl is loaded at run time).
//!
//! Transfers read and write the Burn tensors' own device buffers (no host round trip). Ordering
//! with Burn's compute stream is explicit: before a transfer the rank waits for its queued work
//! (`B::sync`), NCCL runs on the communicator's own stream, and the call returns when that
//! stream is done, so the received tensor is ready for any later Burn op. A transfer that does
//! not finish within the timeout aborts the communicator and returns
//! [`CommunicationTimeout`](DilatedAttentionError::CommunicationTimeout).
//!
//! Bootstrap ([`NcclCommunicator::from_env`]), as torchrun users expect: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK` (the GPU, default `RANK`), and either `MASTER_ADDR`/`MASTER_PORT` (rank 0 serves
//! NCCL's unique id over TCP; default `127.0.0.1:29500`) or `DILATED_NCCL_ID_FILE` (rank 0 writes
//! it to a shared file) with `DILATED_NCCL_RUN_ID` ([`NCCL_RUN_ID_ENV`](crate::nccl::NCCL_RUN_ID_ENV): a value the ranks of one
//! run share and no other run uses; a file of another run is never read).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::{DType, Device, Tensor, TensorData};
use cudarc::driver::CudaContext;
use cudarc::driver::result::stream as cu_stream;
use cudarc::driver::sys as cu;
use cudarc::nccl::result as nccl;
use cudarc::nccl::sys as nccl_sys;
use dilated_attention_core::{DilatedAttentionError, Result};

use super::cuda_buffer::{CudaBuffer, NcclBackend};
use super::unique_id::{NcclId, id_through_file, id_through_tcp, setup_error};
use crate::id_file::run_id_from_env;
use crate::{Communicator, PendingExchange, Receive};

/// The raw NCCL handles (pointers, hence the manual `Send`/`Sync`: every use is behind the
/// communicator's lock).
struct Handles {
    comm: nccl_sys::ncclComm_t,
    stream: cu::CUstream,
    aborted: bool,
}

// SAFETY: the handles are only used while holding the communicator's mutex, with the CUDA
// context bound to the calling thread; NCCL communicators may be used from any thread.
unsafe impl Send for Handles {}

/// One rank of an NCCL group; see the [module docs](self).
pub struct NcclCommunicator<B: NcclBackend> {
    rank: usize,
    world_size: usize,
    device: Device<B>,
    context: Arc<CudaContext>,
    handles: Mutex<Handles>,
    timeout: Duration,
}

impl<B: NcclBackend> core::fmt::Debug for NcclCommunicator<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NcclCommunicator")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device", &self.device)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How long a transfer (and the bootstrap) may take by default.
pub const NCCL_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// NCCL calls to queue on the communicator's stream, given its handle and the stream.
trait NcclCalls:
    FnOnce(nccl_sys::ncclComm_t, nccl_sys::cudaStream_t) -> core::result::Result<(), String>
{
}

impl<F> NcclCalls for F where
    F: FnOnce(nccl_sys::ncclComm_t, nccl_sys::cudaStream_t) -> core::result::Result<(), String>
{
}

/// The stream and communicator of one rank, made on the calling thread with `context` bound
/// (`ncclCommInitRank` blocks until every rank joins).
fn init_handles(
    context: &CudaContext,
    rank: usize,
    world_size: usize,
    id: NcclId,
) -> Result<Handles> {
    context
        .bind_to_thread()
        .map_err(|e| setup_error(rank, format!("CUDA context: {e:?}")))?;
    let stream = cu_stream::create(cu_stream::StreamKind::NonBlocking)
        .map_err(|e| setup_error(rank, format!("CUDA stream: {e:?}")))?;
    let mut comm = core::ptr::null_mut();
    // SAFETY: `comm` is a valid out-pointer; the id comes from ncclGetUniqueId.
    unsafe { nccl::comm_init_rank(&mut comm, world_size as i32, id.raw(), rank as i32) }
        .map_err(|e| setup_error(rank, format!("ncclCommInitRank: {e:?}")))?;
    Ok(Handles {
        comm,
        stream,
        aborted: false,
    })
}

impl<B: NcclBackend> NcclCommunicator<B> {
    /// Joins the group of `world_size` ranks identified by `id` as `rank`, on `device`, within
    /// [`NCCL_DEFAULT_TIMEOUT`] ([`Self::new_within`]).
    ///
    /// # Errors
    /// [`Communication`](DilatedAttentionError::Communication) when CUDA or NCCL fail (libnccl not
    /// found, a peer never joins, ...).
    pub fn new(device: Device<B>, rank: usize, world_size: usize, id: NcclId) -> Result<Self> {
        Self::new_within(device, rank, world_size, id, NCCL_DEFAULT_TIMEOUT)
    }

    /// [`Self::new`], giving up when the group has not formed within `timeout`
    /// (`ncclCommInitRank` blocks until every rank joins), which is also the communicator's
    /// transfer timeout ([`Self::with_timeout`] changes it). The init runs on a helper thread; on
    /// a timeout that thread stays blocked inside NCCL until the missing peers come (it then
    /// destroys the communicator) or the process ends, and the call returns.
    ///
    /// # Errors
    /// As [`Self::new`];
    /// [`CommunicationTimeout`](DilatedAttentionError::CommunicationTimeout) when the group does
    /// not form within `timeout`.
    pub fn new_within(
        device: Device<B>,
        rank: usize,
        world_size: usize,
        id: NcclId,
        timeout: Duration,
    ) -> Result<Self> {
        let context = CudaContext::new(B::cuda_ordinal(&device))
            .map_err(|e| setup_error(rank, format!("CUDA context: {e:?}")))?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let init_context = context.clone();
        std::thread::Builder::new()
            .name(format!("nccl-init-rank-{rank}"))
            .spawn(move || {
                let handles = init_handles(&init_context, rank, world_size, id);
                if let Err(std::sync::mpsc::SendError(Ok(late))) = sender.send(handles) {
                    // The caller gave up: nobody will use this communicator.
                    let _ = init_context.bind_to_thread();
                    // SAFETY: the handles were just made and are not used elsewhere.
                    unsafe {
                        let _ = nccl::comm_destroy(late.comm);
                        let _ = cu_stream::destroy(late.stream);
                    }
                }
            })
            .map_err(|e| setup_error(rank, format!("spawning the NCCL init thread: {e}")))?;
        let handles = match receiver.recv_timeout(timeout) {
            Ok(handles) => handles?,
            Err(_) => {
                return Err(DilatedAttentionError::CommunicationTimeout {
                    rank,
                    peer: usize::from(rank == 0),
                    operation: "ncclCommInitRank (the group never formed)",
                    waited_ms: timeout.as_millis() as u64,
                });
            }
        };
        context
            .bind_to_thread()
            .map_err(|e| setup_error(rank, format!("CUDA context: {e:?}")))?;
        Ok(Self {
            rank,
            world_size,
            device,
            context,
            handles: Mutex::new(handles),
            timeout,
        })
    }

    /// Every GPU of `devices` as one rank of a group in this process (rank `i` on
    /// `devices[i]`); drive each from its own thread.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn local_group(devices: Vec<Device<B>>) -> Result<Vec<Self>> {
        let id = NcclId::new()?;
        let world = devices.len();
        // ncclCommInitRank blocks until every rank joins: one thread per rank
        std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .into_iter()
                .enumerate()
                .map(|(rank, device)| s.spawn(move || Self::new(device, rank, world, id)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("NCCL init thread"))
                .collect()
        })
    }

    /// Joins the group described by the environment (see the [module docs](self)), on
    /// `device_for(LOCAL_RANK)`.
    ///
    /// # Errors
    /// [`Communication`](DilatedAttentionError::Communication) for missing or malformed variables,
    /// a rendezvous that fails within the timeout, and the errors of [`Self::new`].
    pub fn from_env(device_for: impl FnOnce(usize) -> Device<B>) -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok();
        let number = |name: &'static str| -> Result<usize> {
            var(name)
                .ok_or_else(|| setup_error(0, format!("{name} is not set")))?
                .parse()
                .map_err(|e| setup_error(0, format!("{name}: {e}")))
        };
        let rank = number("RANK")?;
        let world_size = number("WORLD_SIZE")?;
        let local_rank = var("LOCAL_RANK").map_or(Ok(rank), |_| number("LOCAL_RANK"))?;
        if rank >= world_size {
            return Err(setup_error(
                rank,
                format!("RANK {rank} >= WORLD_SIZE {world_size}"),
            ));
        }
        let id = match var("DILATED_NCCL_ID_FILE") {
            Some(path) => {
                let run = run_id_from_env(rank)?;
                id_through_file(Path::new(&path), &run, rank, NCCL_DEFAULT_TIMEOUT)?
            }
            None => {
                let host = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
                let port = var("MASTER_PORT").unwrap_or_else(|| "29500".into());
                id_through_tcp(
                    &format!("{host}:{port}"),
                    rank,
                    world_size,
                    NCCL_DEFAULT_TIMEOUT,
                )?
            }
        };
        Self::new(device_for(local_rank), rank, world_size, id)
    }

    /// The same communicator with another transfer timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn error(&self, peer: usize, operation: &'static str, reason: String) -> DilatedAttentionError {
        DilatedAttentionError::Communication {
            rank: self.rank,
            peer,
            operation,
            reason,
        }
    }

    /// Runs `enqueue` (NCCL calls on the communicator's stream) after Burn's queued work, and
    /// waits for the stream within the timeout.
    fn run(&self, peer: usize, operation: &'static str, enqueue: impl NcclCalls) -> Result<()> {
        self.enqueue(peer, operation, enqueue)?;
        self.wait(peer, operation)
    }

    /// Queues `enqueue` (NCCL calls on the communicator's stream) after Burn's queued work
    /// (`B::sync`), without waiting for it.
    fn enqueue(&self, peer: usize, operation: &'static str, enqueue: impl NcclCalls) -> Result<()> {
        let handles = self.handles(peer, operation)?;
        B::sync(&self.device)
            .map_err(|e| self.error(peer, operation, format!("Burn sync: {e:?}")))?;
        enqueue(handles.comm, handles.stream as nccl_sys::cudaStream_t)
            .map_err(|e| self.error(peer, operation, e))
    }

    /// The handles, locked, with the context bound to this thread; an error once aborted.
    fn handles(
        &self,
        peer: usize,
        operation: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, Handles>> {
        let handles = self
            .handles
            .lock()
            .map_err(|_| self.error(peer, operation, "a previous transfer panicked".into()))?;
        if handles.aborted {
            return Err(self.error(
                peer,
                operation,
                "the communicator was aborted after a timeout".into(),
            ));
        }
        self.context
            .bind_to_thread()
            .map_err(|e| self.error(peer, operation, format!("CUDA context: {e:?}")))?;
        Ok(handles)
    }

    /// Waits for everything queued on the communicator's stream, polling so that a timeout
    /// aborts the communicator (`ncclCommAbort`) and returns an error instead of hanging.
    fn wait(&self, peer: usize, operation: &'static str) -> Result<()> {
        let mut handles = self.handles(peer, operation)?;
        let start = Instant::now();
        loop {
            // SAFETY: the stream is live while the communicator is.
            match unsafe { cu::cuStreamQuery(handles.stream) } {
                cu::CUresult::CUDA_SUCCESS => return Ok(()),
                cu::CUresult::CUDA_ERROR_NOT_READY => {}
                other => return Err(self.error(peer, operation, format!("CUDA: {other:?}"))),
            }
            let mut async_error = nccl_sys::ncclResult_t::ncclSuccess;
            // SAFETY: valid communicator and out-pointer.
            unsafe { nccl_sys::ncclCommGetAsyncError(handles.comm, &mut async_error) };
            if !matches!(
                async_error,
                nccl_sys::ncclResult_t::ncclSuccess | nccl_sys::ncclResult_t::ncclInProgress
            ) {
                return Err(self.error(peer, operation, format!("NCCL: {async_error:?}")));
            }
            if start.elapsed() > self.timeout {
                // SAFETY: valid communicator; it is not used again.
                let _ = unsafe { nccl::comm_abort(handles.comm) };
                handles.aborted = true;
                return Err(DilatedAttentionError::CommunicationTimeout {
                    rank: self.rank,
                    peer,
                    operation,
                    waited_ms: self.timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    fn empty(&self, len: usize, dtype: DType) -> Tensor<B, 1> {
        Tensor::empty([len], (&self.device, dtype))
    }
}

impl<B: NcclBackend> Drop for NcclCommunicator<B> {
    fn drop(&mut self) {
        if let Ok(handles) = self.handles.get_mut() {
            let _ = self.context.bind_to_thread();
            // SAFETY: the handles are ours and no longer used.
            unsafe {
                if !handles.aborted {
                    let _ = nccl::comm_destroy(handles.comm);
                }
                let _ = cu_stream::destroy(handles.stream);
            }
        }
    }
}

fn nccl_dtype(dtype: DType) -> core::result::Result<nccl_sys::ncclDataType_t, String> {
    Ok(match dtype {
        DType::F32 => nccl_sys::ncclDataType_t::ncclFloat32,
        DType::F16 => nccl_sys::ncclDataType_t::ncclFloat16,
        DType::BF16 => nccl_sys::ncclDataType_t::ncclBfloat16,
        DType::F64 => nccl_sys::ncclDataType_t::ncclFloat64,
        other => return Err(format!("no NCCL type for {other:?}")),
    })
}

fn buffer<B: NcclBackend>(tensor: &Tensor<B, 1>) -> CudaBuffer {
    B::cuda_buffer(tensor.clone().into_primitive().tensor())
}

fn ok(
    result: core::result::Result<nccl::NcclStatus, nccl::NcclError>,
    call: &str,
) -> core::result::Result<(), String> {
    result.map(|_| ()).map_err(|e| format!("{call}: {e:?}"))
}

impl<B: NcclBackend> Communicator<B> for NcclCommunicator<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn device(&self) -> &Device<B> {
        &self.device
    }

    fn exchange(
        &self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Option<Tensor<B, 1>>> {
        self.start_exchange(send, recv)?.finish()
    }

    /// Queues the paired send and receive on the communicator's stream after Burn's queued work
    /// and returns: the transfer runs while the caller queues compute on Burn's stream, and
    /// `finish` waits for it (within the timeout).
    fn start_exchange<'a>(
        &'a self,
        send: Option<(usize, Tensor<B, 1>)>,
        recv: Option<Receive>,
    ) -> Result<Box<dyn PendingExchange<B> + 'a>> {
        const OPERATION: &str = "exchange";
        let peer = send
            .as_ref()
            .map(|s| s.0)
            .or(recv.map(|r| r.from))
            .unwrap_or(self.rank);
        let received = recv.map(|r| self.empty(r.len, r.dtype));
        let send_buffer = send
            .as_ref()
            .map(|(to, t)| (*to, t.dtype(), t.dims()[0], buffer(t)));
        let recv_buffer = received.as_ref().map(buffer);
        self.enqueue(peer, OPERATION, |comm, stream| {
            ok(nccl::group_start(), "ncclGroupStart")?;
            if let Some((to, dtype, len, buf)) = &send_buffer {
                // SAFETY: a live device buffer of `len` elements of `dtype`.
                ok(
                    unsafe {
                        nccl::send(
                            buf.ptr as *const _,
                            *len,
                            nccl_dtype(*dtype)?,
                            *to as i32,
                            comm,
                            stream,
                        )
                    },
                    "ncclSend",
                )?;
            }
            if let (Some(r), Some(buf)) = (recv, &recv_buffer) {
                // SAFETY: a fresh device buffer of `r.len` elements of `r.dtype`.
                ok(
                    unsafe {
                        nccl::recv(
                            buf.ptr as *mut _,
                            r.len,
                            nccl_dtype(r.dtype)?,
                            r.from as i32,
                            comm,
                            stream,
                        )
                    },
                    "ncclRecv",
                )?;
            }
            ok(nccl::group_end(), "ncclGroupEnd")
        })?;
        Ok(Box::new(NcclExchange {
            communicator: self,
            peer,
            received,
            _buffers: (send_buffer.map(|s| s.3), recv_buffer),
        }))
    }

    fn all_gather(&self, tensor: Tensor<B, 1>) -> Result<Vec<Tensor<B, 1>>> {
        const OPERATION: &str = "all_gather";
        let world = self.world_size;
        // lengths first (exact in f32 as two 20-bit halves), then one padded all-gather
        let len = tensor.dims()[0];
        let mine = Tensor::<B, 1>::from_data(
            TensorData::from([(len >> 20) as f32, (len & 0xF_FFFF) as f32]),
            (&self.device, DType::F32),
        );
        let lengths = self.all_gather_equal(mine, OPERATION)?;
        let lengths: Vec<f32> = lengths
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| self.error(self.rank, OPERATION, format!("{e:?}")))?;
        let lengths: Vec<usize> = lengths
            .chunks(2)
            .map(|c| ((c[0] as usize) << 20) + c[1] as usize)
            .collect();
        let longest = lengths.iter().copied().max().unwrap_or(0).max(1);
        let padded = if len == longest {
            tensor
        } else {
            Tensor::cat(
                vec![
                    tensor.clone(),
                    Tensor::zeros([longest - len], (&self.device, tensor.dtype())),
                ],
                0,
            )
        };
        let all = self.all_gather_equal(padded, OPERATION)?;
        Ok((0..world)
            .map(|r| all.clone().narrow(0, r * longest, lengths[r]))
            .collect())
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        const OPERATION: &str = "all_reduce_sum";
        let (len, dtype) = (tensor.dims()[0], tensor.dtype());
        let out = self.empty(len, dtype);
        let (src, dst) = (buffer(&tensor), buffer(&out));
        self.run(self.rank, OPERATION, |comm, stream| {
            // SAFETY: live device buffers of `len` elements of `dtype`.
            ok(
                unsafe {
                    nccl::all_reduce(
                        src.ptr as *const _,
                        dst.ptr as *mut _,
                        len,
                        nccl_dtype(dtype)?,
                        nccl_sys::ncclRedOp_t::ncclSum,
                        comm,
                        stream,
                    )
                },
                "ncclAllReduce",
            )
        })?;
        drop((src, dst));
        Ok(out)
    }
}

impl<B: NcclBackend> NcclCommunicator<B> {
    /// All-gather of equally long tensors, concatenated in rank order.
    fn all_gather_equal(
        &self,
        tensor: Tensor<B, 1>,
        operation: &'static str,
    ) -> Result<Tensor<B, 1>> {
        let (len, dtype) = (tensor.dims()[0], tensor.dtype());
        let out = self.empty(len * self.world_size, dtype);
        let (src, dst) = (buffer(&tensor), buffer(&out));
        self.run(self.rank, operation, |comm, stream| {
            // SAFETY: live device buffers of `len` and `len * world` elements of `dtype`.
            ok(
                unsafe {
                    nccl::all_gather(
                        src.ptr as *const _,
                        dst.ptr as *mut _,
                        len,
                        nccl_dtype(dtype)?,
                        comm,
                        stream,
                    )
                },
                "ncclAllGather",
            )
        })?;
        drop((src, dst));
        Ok(out)
    }
}

/// A queued NCCL exchange: its buffers stay alive (and out of Burn's pool) until `finish` has
/// waited for the stream.
struct NcclExchange<'a, B: NcclBackend> {
    communicator: &'a NcclCommunicator<B>,
    peer: usize,
    received: Option<Tensor<B, 1>>,
    _buffers: (Option<CudaBuffer>, Option<CudaBuffer>),
}

impl<B: NcclBackend> PendingExchange<B> for NcclExchange<'_, B> {
    fn finish(self: Box<Self>) -> Result<Option<Tensor<B, 1>>> {
        // the compute queued since the start runs while the transfer does
        B::submit(&self.communicator.device);
        self.communicator.wait(self.peer, "exchange")?;
        Ok(self.received)
    }
}
