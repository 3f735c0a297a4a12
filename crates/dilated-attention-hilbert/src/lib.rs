//! Hilbert ordering for dilated attention over tokens that live on a grid: generalised Hilbert
//! curves over any rectangle, the permutation they define, and [`HilbertDilatedAttention`].

mod curve2d;
mod curve3d;
mod hilbert_attention;
mod hilbert_order;

pub use curve2d::*;
pub use curve3d::*;
pub use hilbert_attention::*;
pub use hilbert_order::*;
