//! The impls of [`DilatedAttentionBackend`](crate::DilatedAttentionBackend), one file per Burn
//! backend family.

mod autodiff;
#[cfg(feature = "cubecl")]
mod cube;
#[cfg(feature = "fusion")]
mod fusion;
#[cfg(feature = "ndarray")]
mod ndarray;
