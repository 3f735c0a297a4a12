//! `NdArray`: the CPU backend runs the reference path.

use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};

use crate::DilatedAttentionBackend;
use crate::backend::untracked_backend_items;

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> DilatedAttentionBackend
    for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    untracked_backend_items!();
}
