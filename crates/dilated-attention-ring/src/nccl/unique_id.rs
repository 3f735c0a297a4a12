//! NCCL's unique id and how the ranks share it: rank 0 makes it and serves it over TCP
//! (`MASTER_ADDR`/`MASTER_PORT`) or writes it to a shared file (`DILATED_NCCL_ID_FILE`, tagged
//! with `DILATED_NCCL_RUN_ID`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use cudarc::nccl::result as nccl;
use cudarc::nccl::sys as nccl_sys;
use dilated_attention_core::Result;

pub(crate) use crate::id_file::setup_error;
use crate::id_file::{wait_for_id_file, write_id_file};

/// NCCL's unique id of a communicator: rank 0 makes it, every rank needs it.
#[derive(Clone, Copy)]
pub struct NcclId(pub [u8; 128]);

impl NcclId {
    /// A fresh id (loads libnccl).
    ///
    /// # Errors
    /// [`Communication`](DilatedAttentionError::Communication) when NCCL fails.
    pub fn new() -> Result<Self> {
        let id =
            nccl::get_uniqueid().map_err(|e| setup_error(0, format!("ncclGetUniqueId: {e:?}")))?;
        Ok(Self(id.internal.map(|c| c as u8)))
    }

    pub(crate) fn raw(&self) -> nccl_sys::ncclUniqueId {
        nccl_sys::ncclUniqueId {
            internal: self.0.map(|b| b as core::ffi::c_char),
        }
    }
}

/// Rank 0 serves the id to `world_size - 1` connections at `address`; the others fetch it.
pub(crate) fn id_through_tcp(
    address: &str,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<NcclId> {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = address
        .to_socket_addrs()
        .map_err(|e| setup_error(rank, format!("MASTER_ADDR/MASTER_PORT {address}: {e}")))?
        .next()
        .ok_or_else(|| setup_error(rank, format!("{address} resolves to nothing")))?;
    if rank == 0 {
        let id = NcclId::new()?;
        let listener =
            TcpListener::bind(addr).map_err(|e| setup_error(0, format!("bind {addr}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| setup_error(0, format!("{e}")))?;
        let mut served = 1;
        while served < world_size {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .and_then(|_| stream.write_all(&id.0))
                        .map_err(|e| setup_error(0, format!("serving the NCCL id: {e}")))?;
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(setup_error(
                            0,
                            format!("only {served} of {world_size} ranks reached {addr} in time"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(setup_error(0, format!("accept on {addr}: {e}"))),
            }
        }
        return Ok(id);
    }
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(mut stream) => {
                let mut id = [0u8; 128];
                stream
                    .set_read_timeout(Some(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(1)),
                    ))
                    .and_then(|_| stream.read_exact(&mut id))
                    .map_err(|e| {
                        setup_error(rank, format!("reading the NCCL id from {addr}: {e}"))
                    })?;
                return Ok(NcclId(id));
            }
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(setup_error(
                        rank,
                        format!("rank 0 never answered at {addr}: {e}"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Rank 0 writes the id of run `run` to `path`; the others wait for an id of that run there
/// (a file of an earlier run is not read: [`crate::id_file`]).
pub(crate) fn id_through_file(
    path: &Path,
    run: &str,
    rank: usize,
    timeout: Duration,
) -> Result<NcclId> {
    if rank == 0 {
        let id = NcclId::new()?;
        write_id_file(path, run, &id.0)?;
        return Ok(id);
    }
    wait_for_id_file(path, run, rank, timeout).map(NcclId)
}
