//! `Autodiff<B>`: over a backend with fused kernels, the forward runs them and registers the
//! fused backward kernels as its backward step; otherwise (no kernels, the reference path
//! forced, or dropout while training) the reference body runs on the autodiff backend's ops and
//! records its own backward.
//!
//! Burn's autodiff ops have one output each, so the output and the LSE are two ops over the same
//! parents sharing one saved state: a loss that uses only the output runs the backward kernels
//! once; one that also uses the LSE runs them once more with the LSE's gradient, and the
//! gradients add up.

use std::sync::Arc;

use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorMetadata, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use dilated_attention_core::{
    DilatedAttentionConfig, DilatedAttentionError, KernelChoice, KernelStrategy, Result,
    SequenceOrder,
};

use crate::backend::kernel_of;
use crate::{
    CustomAttention, DilatedAttentionBackend, FusedBackwardInputs, kernel_strategy,
    reference_along_order, reference_with_lse,
};

/// What the backward kernels need, saved by the forward.
#[derive(Debug, Clone)]
struct FusedState<B: DilatedAttentionBackend> {
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    key_padding_mask: Option<BoolTensor<B>>,
    output: FloatTensor<B>,
    /// `f32`.
    lse: FloatTensor<B>,
    config: DilatedAttentionConfig,
    order: Option<SequenceOrder>,
}

impl<B: DilatedAttentionBackend> FusedState<B> {
    /// Runs the backward kernels and registers the gradients of the tracked parents.
    fn backward(
        self,
        parents: [Option<NodeId>; 3],
        grads: &mut Gradients,
        grad_output: Option<FloatTensor<B>>,
        grad_lse: Option<FloatTensor<B>>,
    ) {
        let inputs = FusedBackwardInputs {
            query: self.query,
            key: self.key,
            value: self.value,
            key_padding_mask: self.key_padding_mask,
            output: self.output,
            lse: self.lse,
            grad_output,
            grad_lse,
        };
        let result = B::fused_dilated_attention_backward(inputs, &self.config, self.order.as_ref());
        // The forward ran on these very tensors and config, so the checks cannot fail here:
        // only the device can (`DilatedAttentionError::Device`), and a backward step cannot
        // return an error.
        let gradients = result.unwrap_or_else(|e| panic!("fused backward: {e}"));
        register_gradients::<B>(parents, grads, gradients);
    }
}

/// Registers the gradients of the tracked parents among q, k and v.
fn register_gradients<B: DilatedAttentionBackend>(
    parents: [Option<NodeId>; 3],
    grads: &mut Gradients,
    gradients: [FloatTensor<B>; 3],
) {
    for (parent, gradient) in parents.into_iter().zip(gradients) {
        if let Some(id) = parent {
            grads.register::<B>(id, gradient);
        }
    }
}

/// Backward step of the output.
#[derive(Debug)]
struct OutputBackward;

impl<B: DilatedAttentionBackend> Backward<B, 3> for OutputBackward {
    type State = FusedState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        ops.state.backward(
            ops.parents.map(|p| p.map(|node| node.id)),
            grads,
            Some(grad),
            None,
        );
    }
}

/// Backward step of the log-sum-exp.
#[derive(Debug)]
struct LseBackward;

impl<B: DilatedAttentionBackend> Backward<B, 3> for LseBackward {
    type State = FusedState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        ops.state.backward(
            ops.parents.map(|p| p.map(|node| node.id)),
            grads,
            None,
            Some(grad),
        );
    }
}

/// What a [`CustomAttention`]'s backward needs, saved by its forward.
#[derive(Debug, Clone)]
struct CustomState<B: DilatedAttentionBackend> {
    function: Arc<dyn CustomAttention<B>>,
    inputs: [FloatTensor<B>; 3],
    output: FloatTensor<B>,
    lse: FloatTensor<B>,
}

impl<B: DilatedAttentionBackend> CustomState<B> {
    fn backward(
        self,
        parents: [Option<NodeId>; 3],
        grads: &mut Gradients,
        grad_output: Option<FloatTensor<B>>,
        grad_lse: Option<FloatTensor<B>>,
    ) {
        let gradients = self
            .function
            .backward(self.inputs, self.output, self.lse, grad_output, grad_lse)
            .unwrap_or_else(|e| panic!("backward of {:?}: {e}", self.function));
        register_gradients::<B>(parents, grads, gradients);
    }
}

/// Backward step of a custom attention: one node for the output and the log-sum-exp packed
/// together (`[.., head_dim + 1]`), so that a loss using both runs the function's backward once.
#[derive(Debug)]
struct CustomPackedBackward;

impl<B: DilatedAttentionBackend> Backward<B, 3> for CustomPackedBackward {
    type State = CustomState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let packed =
            Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let [b, n, h, d1] = packed.dims();
        let grad_output = packed.clone().narrow(3, 0, d1 - 1);
        let grad_lse = packed.narrow(3, d1 - 1, 1).reshape([b, n, h]);
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        ops.state.backward(
            parents,
            grads,
            Some(grad_output.into_primitive().tensor()),
            Some(grad_lse.into_primitive().tensor()),
        );
    }
}

impl<B: DilatedAttentionBackend, C: CheckpointStrategy> DilatedAttentionBackend for Autodiff<B, C> {
    type Inner = B;

    fn inner_float(tensor: FloatTensor<Self>) -> FloatTensor<B> {
        tensor.primitive
    }

    fn inner_bool(tensor: BoolTensor<Self>) -> BoolTensor<B> {
        tensor
    }

    fn inner_device(device: &Device<Self>) -> Device<B> {
        device.clone()
    }

    fn custom_attention(
        function: Arc<dyn CustomAttention<B>>,
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        let inputs = [
            query.primitive.clone(),
            key.primitive.clone(),
            value.primitive.clone(),
        ];
        let (output, lse) =
            function.forward(inputs[0].clone(), inputs[1].clone(), inputs[2].clone())?;
        let out = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(output.clone()));
        let lse_t = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(lse.clone()));
        let [b, n, h, d] = out.dims();
        let lse_as_out = if lse_t.dtype() == out.dtype() {
            lse_t
        } else {
            lse_t.cast(FloatDType::from(out.dtype()))
        };
        let packed = Tensor::cat(vec![out, lse_as_out.reshape([b, n, h, 1])], 3);
        let state = CustomState {
            function,
            inputs,
            output,
            lse,
        };
        let nodes = [query.node, key.node, value.node];
        let packed = match CustomPackedBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, packed.into_primitive().tensor()),
            OpsKind::UnTracked(prep) => prep.finish(packed.into_primitive().tensor()),
        };
        // both outputs are views of the one tracked node
        let packed = Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(packed));
        let output = packed.clone().narrow(3, 0, d);
        let lse = packed.narrow(3, d, 1).reshape([b, n, h]);
        Ok((
            output.into_primitive().tensor(),
            lse.into_primitive().tensor(),
        ))
    }

    fn dilated_attention_with_lse(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        tracked_attention::<B, C>(query, key, value, key_padding_mask, config, None)
    }

    fn dilated_attention_along_order(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
        order: &SequenceOrder,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        tracked_attention::<B, C>(query, key, value, key_padding_mask, config, Some(order))
    }

    fn max_allocation_bytes(device: &Device<Self>) -> Option<u64> {
        B::max_allocation_bytes(device)
    }

    /// As the inner backend's, except that dropout while training runs on the reference path
    /// (the kernels have no dropout).
    fn dilated_attention_kernel(
        dims: [usize; 4],
        dtype: DType,
        device: &Device<Self>,
        config: &DilatedAttentionConfig,
    ) -> Result<KernelChoice> {
        if config.dropout == 0.0 {
            return B::dilated_attention_kernel(dims, dtype, device, config);
        }
        let reason = "dropout while training runs on the reference path only (the kernels have \
                      no dropout)";
        match kernel_strategy(config)? {
            KernelStrategy::Reference => Ok(KernelChoice::REFERENCE),
            KernelStrategy::Auto => {
                crate::fallback_log::warn_reference_fallback(reason);
                Ok(KernelChoice::REFERENCE)
            }
            forced => Err(DilatedAttentionError::KernelUnavailable {
                strategy: forced,
                reason: format!("{reason}; dropout is {}", config.dropout),
            }),
        }
    }
}

/// `Autodiff<B, C>` (the tracked backend of [`tracked_attention`]).
type Tracked<B, C> = Autodiff<B, C>;

/// The output and log-sum-exp primitives of the tracked backend.
type TrackedOutputs<B, C> = (FloatTensor<Tracked<B, C>>, FloatTensor<Tracked<B, C>>);

/// The body of `dilated_attention_with_lse` (and `_along_order`) under `Autodiff`: the fused
/// forward with the fused backward as its backward step where the kernels take the call,
/// otherwise the reference path on the autodiff backend's ops (which records its own backward).
fn tracked_attention<B: DilatedAttentionBackend, C: CheckpointStrategy>(
    query: FloatTensor<Autodiff<B, C>>,
    key: FloatTensor<Autodiff<B, C>>,
    value: FloatTensor<Autodiff<B, C>>,
    key_padding_mask: Option<BoolTensor<Autodiff<B, C>>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<TrackedOutputs<B, C>> {
    if !kernel_of::<Tracked<B, C>>(&query, config)?.is_fused() {
        return match order {
            Some(order) => reference_along_order::<Tracked<B, C>>(
                query,
                key,
                value,
                key_padding_mask,
                config,
                order,
            ),
            None => {
                reference_with_lse::<Tracked<B, C>>(query, key, value, key_padding_mask, config)
            }
        };
    }
    let dtype = query.dtype();
    let (output, lse) = B::fused_dilated_attention_forward(
        query.primitive.clone(),
        key.primitive.clone(),
        value.primitive.clone(),
        key_padding_mask.clone(),
        config,
        order,
    )?;
    let lse_out = if dtype == DType::F32 {
        lse.clone()
    } else {
        B::float_cast(lse.clone(), FloatDType::from(dtype))
    };
    let state = FusedState::<B> {
        query: query.primitive,
        key: key.primitive,
        value: value.primitive,
        key_padding_mask,
        output: output.clone(),
        lse,
        config: config.clone(),
        order: order.cloned(),
    };
    let nodes = [query.node, key.node, value.node];
    let output = match OutputBackward
        .prepare::<C>(nodes.clone())
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state.clone(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    let lse = match LseBackward.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, lse_out),
        OpsKind::UnTracked(prep) => prep.finish(lse_out),
    };
    Ok((output, lse))
}
