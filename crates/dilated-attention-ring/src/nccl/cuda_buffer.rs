//! [`NcclBackend`]: the raw CUDA buffer behind a Burn float tensor, for NCCL to read or write
//! in place (no host round trip).
//!
//! Implemented for burn-cubecl's `CubeBackend<CudaRuntime, ..>` and for `Fusion` over it (burn's
//! default `Cuda` type): a fusion tensor is resolved to its CubeCL tensor, whose buffer is the
//! same memory.

use core::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::cubecl::Runtime;
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, FloatElement, IntElement};
use burn_fusion::Fusion;

/// A contiguous device buffer: its address, its size in bytes, and what keeps it alive.
pub struct CudaBuffer {
    /// Device address.
    pub ptr: u64,
    /// Size in bytes.
    pub bytes: u64,
    _keep: Box<dyn Any>,
}

/// A Burn backend whose float tensors live in CUDA memory NCCL can use directly.
pub trait NcclBackend: Backend {
    /// The CUDA device ordinal of `device`.
    fn cuda_ordinal(device: &Self::Device) -> usize;

    /// The contiguous buffer of `tensor` (a copy only when the tensor is not contiguous). Call
    /// `Self::sync` first when NCCL must see every queued write to it.
    fn cuda_buffer(tensor: FloatTensor<Self>) -> CudaBuffer;

    /// Sends the work queued for `device` to the GPU without waiting for it, so that it runs
    /// while the host waits for a transfer on another stream.
    fn submit(device: &Self::Device);
}

fn cube_buffer(tensor: CubeTensor<CudaRuntime>, keep: Box<dyn Any>) -> CudaBuffer {
    let tensor = into_contiguous(tensor);
    let resource = tensor
        .client
        .get_resource(tensor.handle.clone())
        .expect("the buffer of a live tensor");
    let (ptr, bytes) = (resource.resource().ptr, resource.resource().size);
    CudaBuffer {
        ptr,
        bytes,
        _keep: Box::new((tensor, resource, keep)),
    }
}

impl<F: FloatElement, I: IntElement, BT: BoolElement> NcclBackend
    for CubeBackend<CudaRuntime, F, I, BT>
{
    fn cuda_ordinal(device: &CudaDevice) -> usize {
        device.index
    }

    fn cuda_buffer(tensor: FloatTensor<Self>) -> CudaBuffer {
        cube_buffer(tensor, Box::new(()))
    }

    fn submit(device: &CudaDevice) {
        // a failed flush surfaces at the next sync or read
        let _ = CudaRuntime::client(device).flush();
    }
}

impl<F: FloatElement, I: IntElement, BT: BoolElement> NcclBackend
    for Fusion<CubeBackend<CudaRuntime, F, I, BT>>
{
    fn cuda_ordinal(device: &CudaDevice) -> usize {
        device.index
    }

    fn cuda_buffer(tensor: FloatTensor<Self>) -> CudaBuffer {
        // resolving a clone keeps the fusion tensor (and its buffer) registered
        let cube = tensor
            .client
            .clone()
            .resolve_tensor_float::<CubeBackend<CudaRuntime, F, I, BT>>(tensor.clone());
        cube_buffer(cube, Box::new(tensor))
    }

    fn submit(device: &CudaDevice) {
        // run the fusion stream's queued operations (their kernels are launched, not awaited)
        burn_fusion::get_client::<CubeBackend<CudaRuntime, F, I, BT>>(device).sync(|| ());
        <CubeBackend<CudaRuntime, F, I, BT> as NcclBackend>::submit(device);
    }
}
