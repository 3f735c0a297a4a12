//! The checks every call runs on its tensors before anything is queued: shapes
//! ([`AttentionShape`]), one float dtype and one device; and, for modules with parameters, the
//! inputs' dtype against the parameters' ([`ensure_parameter_dtype`]).
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{DType, Distribution, Tensor};
//! use dilated_attention_core::{check_attention_inputs, DilatedAttentionError};
//!
//! let device = Default::default();
//! let q = Tensor::<NdArray, 4>::random([1, 16, 2, 8], Distribution::Default, &device);
//! let shape = check_attention_inputs(&q, &q, &q, None)?;
//! assert_eq!(shape.seq_len, 16);
//! let k = q.clone().cast(DType::F64);
//! let err = check_attention_inputs(&q, &k, &q, None).unwrap_err();
//! assert!(matches!(err, DilatedAttentionError::DTypeMismatch { name: "key", .. }));
//! # Ok::<(), DilatedAttentionError>(())
//! ```

use burn::tensor::{Bool, DType, Tensor, backend::Backend};

use crate::{AttentionShape, DilatedAttentionError, Result};

/// Checks one call's inputs: the shapes of [`AttentionShape::check_inputs`], then that key and
/// value have the query's dtype and that key, value and the mask are on the query's device.
///
/// # Errors
/// The shape errors; [`DilatedAttentionError::DTypeMismatch`] and
/// [`DilatedAttentionError::DeviceMismatch`] naming the tensor and both values.
pub fn check_attention_inputs<B: Backend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    key_padding_mask: Option<&Tensor<B, 2, Bool>>,
) -> Result<AttentionShape> {
    let shape = AttentionShape::check_inputs(
        &query.dims(),
        &key.dims(),
        &value.dims(),
        key_padding_mask.map(Tensor::dims),
    )?;
    let dtype = query.dtype();
    for (name, tensor) in [("key", key), ("value", value)] {
        if tensor.dtype() != dtype {
            return Err(DilatedAttentionError::DTypeMismatch {
                name,
                query: dtype,
                actual: tensor.dtype(),
            });
        }
    }
    let device = query.device();
    let devices = [("key", key.device()), ("value", value.device())]
        .into_iter()
        .chain(key_padding_mask.map(|mask| ("key_padding_mask", mask.device())));
    for (name, other) in devices {
        if other != device {
            return Err(DilatedAttentionError::DeviceMismatch {
                name,
                query: format!("{device:?}"),
                actual: format!("{other:?}"),
            });
        }
    }
    Ok(shape)
}

/// Checks that an input of a module with parameters (projections, norms) has their dtype: burn's
/// matmul and norms take one float dtype, and a mixed call panics inside the backend.
///
/// # Errors
/// [`DilatedAttentionError::ParameterDTypeMismatch`] naming the input and both dtypes.
pub fn ensure_parameter_dtype(name: &'static str, actual: DType, parameters: DType) -> Result<()> {
    if actual == parameters {
        Ok(())
    } else {
        Err(DilatedAttentionError::ParameterDTypeMismatch {
            name,
            parameters,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    use super::*;

    fn random(dims: [usize; 4]) -> Tensor<NdArray, 4> {
        Tensor::random(dims, Distribution::Default, &Default::default())
    }

    #[test]
    fn accepts_matching_inputs_and_names_a_dtype_mismatch() {
        let q = random([2, 9, 3, 4]);
        let mask = Tensor::<NdArray, 2, Bool>::empty([2, 9], &Default::default());
        let shape = check_attention_inputs(&q, &q, &q, Some(&mask)).unwrap();
        assert_eq!(shape.dims(), [2, 9, 3, 4]);
        let v = q.clone().cast(DType::F64);
        let err = check_attention_inputs(&q, &q, &v, None).unwrap_err();
        assert_eq!(
            err,
            DilatedAttentionError::DTypeMismatch {
                name: "value",
                query: DType::F32,
                actual: DType::F64
            }
        );
        assert!(err.to_string().contains("value is F64 but query is F32"));
    }

    #[test]
    fn shape_errors_come_before_dtype_errors() {
        let q = random([2, 9, 3, 4]);
        let k = random([2, 8, 3, 4]).cast(DType::F64);
        assert!(matches!(
            check_attention_inputs(&q, &k, &q, None),
            Err(DilatedAttentionError::ShapeMismatch { name: "key", .. })
        ));
    }

    #[test]
    fn an_input_in_another_dtype_than_the_parameters_is_named() {
        assert_eq!(ensure_parameter_dtype("x", DType::F32, DType::F32), Ok(()));
        let err = ensure_parameter_dtype("query", DType::F16, DType::F32).unwrap_err();
        assert!(
            err.to_string()
                .contains("query is F16 but the module's parameters are F32")
        );
    }
}
