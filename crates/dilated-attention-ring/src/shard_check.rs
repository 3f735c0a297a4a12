//! The per-call check that every rank agrees on the shard layout and the dtype: one all-gather
//! of each rank's local length and dtype, exact at any length in any float dtype.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use dilated_attention_core::{DilatedAttentionError, Result};

use crate::{Communicator, ShardLayout};

/// Base-256 digits of a length: each is exact in every float dtype (bf16 included), so the
/// all-gather of lengths is exact at any length.
const LENGTH_DIGITS: usize = 8;

/// Every rank's local length against the layout, and every rank's dtype against this one's
/// (one all-gather of `LENGTH_DIGITS + 1` small integers, exact in any float dtype).
pub(crate) fn check_shard_lengths<B: Backend>(
    communicator: &dyn Communicator<B>,
    layout: &ShardLayout,
    local_len: usize,
    dtype: DType,
) -> Result<()> {
    let rank = communicator.rank();
    let mut message: Vec<f32> = (0..LENGTH_DIGITS)
        .map(|i| ((local_len as u64 >> (8 * i)) & 0xff) as f32)
        .collect();
    message.push(dtype_code(dtype) as f32);
    let mine =
        Tensor::<B, 1>::from_data(TensorData::from(message.as_slice()), communicator.device());
    for (peer, t) in communicator.all_gather(mine)?.into_iter().enumerate() {
        let got: Vec<f32> = t.into_data().convert::<f32>().to_vec().map_err(|e| {
            DilatedAttentionError::Communication {
                rank,
                peer,
                operation: "shard length check",
                reason: format!("unreadable lengths: {e:?}"),
            }
        })?;
        if got.len() != LENGTH_DIGITS + 1 {
            return Err(DilatedAttentionError::Communication {
                rank,
                peer,
                operation: "shard length check",
                reason: format!(
                    "received {} values, expected {}",
                    got.len(),
                    LENGTH_DIGITS + 1
                ),
            });
        }
        let len = got[..LENGTH_DIGITS]
            .iter()
            .rev()
            .fold(0u64, |acc, &digit| (acc << 8) | digit as u64) as usize;
        if len != layout.local_len(peer) {
            return Err(DilatedAttentionError::ShardMismatch {
                name: "query",
                rank: peer,
                expected: layout.local_len(peer),
                actual: len,
            });
        }
        if got[LENGTH_DIGITS] != dtype_code(dtype) as f32 {
            return Err(DilatedAttentionError::Communication {
                rank,
                peer,
                operation: "shard length check",
                reason: format!(
                    "rank {peer} calls with {} inputs, this rank with {dtype:?}; every rank must use one dtype",
                    dtype_name(got[LENGTH_DIGITS] as u8)
                ),
            });
        }
    }
    Ok(())
}

/// The float dtypes a ring call may use, as small codes for the length check.
const DTYPE_CODES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];

fn dtype_code(dtype: DType) -> u8 {
    DTYPE_CODES
        .iter()
        .position(|&d| d == dtype)
        .map_or(255, |i| i as u8)
}

fn dtype_name(code: u8) -> String {
    DTYPE_CODES
        .get(code as usize)
        .map_or_else(|| "another dtype".into(), |d| format!("{d:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_dtype_has_its_own_code() {
        let codes: Vec<u8> = DTYPE_CODES.iter().map(|&d| dtype_code(d)).collect();
        assert_eq!(codes, vec![0, 1, 2, 3]);
        assert_eq!(dtype_code(DType::I32), 255);
        assert_eq!(dtype_name(2), "BF16");
        assert_eq!(dtype_name(200), "another dtype");
    }
}
