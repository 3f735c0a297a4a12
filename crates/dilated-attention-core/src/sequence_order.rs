//! [`SequenceOrder`]: the order along which attention walks a sequence (a Hilbert curve over a
//! grid, for example), given to the fused kernels as an index array so that they read and write
//! every row in place instead of gathering the tensors into that order and back.

use std::sync::{Arc, Weak};

use crate::{DilatedAttentionError, Result};

/// A permutation of the positions `0..len` of a sequence: position `p` of the attended order is
/// token `tokens()[p]` of the tensors.
///
/// Attention along an order equals "gather the inputs along it, attend, scatter the output (and
/// the log-sum-exp) back": segments, dilation and causal masking all follow the order, and the
/// results come back in the tensors' own layout. The fused kernels read the index array directly
/// (no copy of any tensor); the reference path gathers. Cheap to clone (shared).
///
/// ```
/// use dilated_attention_core::SequenceOrder;
///
/// let order = SequenceOrder::new(vec![2, 0, 3, 1])?;
/// assert_eq!(order.tokens(), &[2, 0, 3, 1]);
/// assert_eq!(order.positions_of_tokens(), vec![1, 3, 0, 2]);
/// assert!(SequenceOrder::new(vec![0, 0, 1]).is_err());
/// # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceOrder {
    tokens: Arc<[u32]>,
}

impl SequenceOrder {
    /// The order that visits `tokens[0]`, then `tokens[1]`, ...
    ///
    /// # Errors
    /// [`NotAPermutation`](DilatedAttentionError::NotAPermutation) unless `tokens` lists each of
    /// `0..tokens.len()` exactly once; [`TooLarge`](DilatedAttentionError::TooLarge) beyond
    /// `u32` positions.
    pub fn new(tokens: Vec<usize>) -> Result<Self> {
        let len = tokens.len();
        if u32::try_from(len).is_err() {
            return Err(DilatedAttentionError::TooLarge {
                field: "sequence order length",
                value: len,
                limit: u32::MAX as usize,
            });
        }
        let mut seen = vec![false; len];
        for (index, &value) in tokens.iter().enumerate() {
            if value >= len || seen[value] {
                return Err(DilatedAttentionError::NotAPermutation { index, value, len });
            }
            seen[value] = true;
        }
        Ok(Self {
            tokens: tokens.into_iter().map(|t| t as u32).collect(),
        })
    }

    /// The token at each position of the order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// A weak reference to the order's shared buffer (clones share it): device-side caches of
    /// the order (the fused kernels') key on it and drop their copy once the order is gone.
    pub fn shared_tokens(&self) -> Weak<[u32]> {
        Arc::downgrade(&self.tokens)
    }

    /// The inverse: `positions_of_tokens()[token]` is the token's position along the order.
    pub fn positions_of_tokens(&self) -> Vec<usize> {
        let mut inverse = vec![0; self.tokens.len()];
        for (position, &token) in self.tokens.iter().enumerate() {
            inverse[token as usize] = position;
        }
        inverse
    }

    /// Number of positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the order is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks that the order covers a sequence of `seq_len` tokens.
    ///
    /// # Errors
    /// [`SequenceMismatch`](DilatedAttentionError::SequenceMismatch) otherwise.
    pub fn check_len(&self, seq_len: usize) -> Result<()> {
        if self.len() == seq_len {
            Ok(())
        } else {
            Err(DilatedAttentionError::SequenceMismatch {
                name: "sequence order",
                query: seq_len,
                actual: self.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_and_repeated_entries_are_errors() {
        assert_eq!(
            SequenceOrder::new(vec![0, 3, 1]),
            Err(DilatedAttentionError::NotAPermutation {
                index: 1,
                value: 3,
                len: 3
            })
        );
        assert_eq!(
            SequenceOrder::new(vec![1, 0, 1]),
            Err(DilatedAttentionError::NotAPermutation {
                index: 2,
                value: 1,
                len: 3
            })
        );
    }

    #[test]
    fn the_inverse_undoes_the_order() {
        let order = SequenceOrder::new(vec![4, 2, 0, 1, 3]).unwrap();
        let inverse = order.positions_of_tokens();
        for (position, &token) in order.tokens().iter().enumerate() {
            assert_eq!(inverse[token as usize], position);
        }
        assert!(order.check_len(5).is_ok());
        assert!(order.check_len(4).is_err());
    }
}
