//! Shape checks of attention inputs, so that bad shapes are errors instead of backend panics.
//!
//! ```
//! use dilated_attention_core::{AttentionShape, DilatedAttentionError};
//!
//! let shape = AttentionShape::check_qkv(&[2, 97, 4, 32], &[2, 97, 4, 32], &[2, 97, 4, 32]).unwrap();
//! assert_eq!(shape.seq_len, 97);
//! let err = AttentionShape::check_qkv(&[2, 97, 4, 32], &[2, 96, 4, 32], &[2, 97, 4, 32]);
//! assert!(matches!(err, Err(DilatedAttentionError::ShapeMismatch { name: "key", .. })));
//! ```

use crate::{DilatedAttentionError, Result};

const LAYOUT: &str = "[batch, seq, heads, head_dim]";

/// The sizes of a validated `[batch, seq, heads, head_dim]` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionShape {
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq_len: usize,
    /// Number of heads.
    pub num_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Reads a `[batch, seq, heads, head_dim]` shape.
    ///
    /// # Errors
    /// [`DilatedAttentionError::WrongRank`] unless `dims` has 4 entries;
    /// [`DilatedAttentionError::EmptyDimension`] when one is 0.
    pub fn from_dims(name: &'static str, dims: &[usize]) -> Result<Self> {
        if dims.len() != 4 {
            return Err(DilatedAttentionError::WrongRank {
                name,
                expected: 4,
                actual: dims.len(),
                layout: LAYOUT,
                shape: dims.to_vec(),
            });
        }
        for (size, dim) in dims.iter().zip(["batch", "seq", "heads", "head_dim"]) {
            if *size == 0 {
                return Err(DilatedAttentionError::EmptyDimension {
                    name,
                    dim,
                    shape: dims.to_vec(),
                });
            }
        }
        Ok(Self {
            batch: dims[0],
            seq_len: dims[1],
            num_heads: dims[2],
            head_dim: dims[3],
        })
    }

    /// The shape as an array.
    pub fn dims(&self) -> [usize; 4] {
        [self.batch, self.seq_len, self.num_heads, self.head_dim]
    }

    /// Checks query, key and value: each `[batch, seq, heads, head_dim]`, all equal.
    ///
    /// # Errors
    /// The errors of [`AttentionShape::from_dims`]; [`DilatedAttentionError::ShapeMismatch`] when
    /// key or value differs from the query.
    pub fn check_qkv(query: &[usize], key: &[usize], value: &[usize]) -> Result<Self> {
        let q = Self::from_dims("query", query)?;
        for (name, dims) in [("key", key), ("value", value)] {
            let other = Self::from_dims(name, dims)?;
            if other != q {
                return Err(DilatedAttentionError::ShapeMismatch {
                    name,
                    query: q.dims(),
                    actual: other.dims(),
                });
            }
        }
        Ok(q)
    }

    /// Checks one call's inputs: query, key and value ([`Self::check_qkv`]) and the optional key
    /// padding mask ([`Self::check_key_padding_mask`]).
    ///
    /// # Errors
    /// Those of both checks.
    pub fn check_inputs(
        query: &[usize],
        key: &[usize],
        value: &[usize],
        key_padding_mask: Option<[usize; 2]>,
    ) -> Result<Self> {
        let shape = Self::check_qkv(query, key, value)?;
        if let Some(mask) = key_padding_mask {
            shape.check_key_padding_mask(&mask)?;
        }
        Ok(shape)
    }

    /// Checks that a key padding mask has shape `[batch, seq]`.
    ///
    /// # Errors
    /// [`DilatedAttentionError::WrongRank`] or [`DilatedAttentionError::MaskShapeMismatch`].
    pub fn check_key_padding_mask(&self, mask: &[usize]) -> Result<()> {
        if mask.len() != 2 {
            return Err(DilatedAttentionError::WrongRank {
                name: "key_padding_mask",
                expected: 2,
                actual: mask.len(),
                layout: "[batch, seq]",
                shape: mask.to_vec(),
            });
        }
        let expected = [self.batch, self.seq_len];
        if mask != expected {
            return Err(DilatedAttentionError::MaskShapeMismatch {
                expected,
                actual: [mask[0], mask[1]],
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_dims_rejects_wrong_rank_and_zero_dims() {
        assert!(matches!(
            AttentionShape::from_dims("query", &[2, 3, 4]),
            Err(DilatedAttentionError::WrongRank {
                expected: 4,
                actual: 3,
                ..
            })
        ));
        let err = AttentionShape::from_dims("query", &[2, 3, 4, 0]).unwrap_err();
        assert_eq!(
            err,
            DilatedAttentionError::EmptyDimension {
                name: "query",
                dim: "head_dim",
                shape: vec![2, 3, 4, 0]
            }
        );
        assert!(err.to_string().contains("head_dim = 0"));
    }

    #[test]
    fn check_qkv_names_the_mismatched_tensor() {
        let q = [1, 5, 2, 8];
        let err = AttentionShape::check_qkv(&q, &q, &[1, 5, 3, 8]).unwrap_err();
        assert_eq!(
            err,
            DilatedAttentionError::ShapeMismatch {
                name: "value",
                query: q,
                actual: [1, 5, 3, 8]
            }
        );
    }

    #[test]
    fn mask_must_be_batch_by_seq() {
        let shape = AttentionShape::from_dims("query", &[2, 7, 1, 8]).unwrap();
        assert_eq!(shape.check_key_padding_mask(&[2, 7]), Ok(()));
        assert_eq!(
            shape.check_key_padding_mask(&[7, 2]),
            Err(DilatedAttentionError::MaskShapeMismatch {
                expected: [2, 7],
                actual: [7, 2]
            })
        );
        assert!(matches!(
            shape.check_key_padding_mask(&[2, 7, 1]),
            Err(DilatedAttentionError::WrongRank { .. })
        ));
    }
}
