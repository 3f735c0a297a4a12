//! `Fusion<B>` (the default `Cuda` and `Wgpu` backend types): the fused kernels registered as
//! custom fusion operations, since otherwise the default backend never reaches them. The inner
//! backend's kernels run when the fusion stream executes the operation (a fusion barrier: the
//! fuser does not look inside). Inputs are checked eagerly, so errors come back from the call,
//! not from the deferred execution.

use core::marker::PhantomData;

use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{DType, Shape};
use burn_fusion::client::GlobalFusionClient;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, KernelChoice, Result, SequenceOrder,
};

use crate::backend::{check_fused_call, fused_or_reference, untracked_backend_items};
use crate::overrides::Submit;
use crate::{DilatedAttentionBackend, FusedBackwardInputs};

/// The checks the kernels' launchers make, run before the operation is queued.
fn check_eagerly<R: FusionRuntime>(
    query: &FusionTensor<R>,
    key: &FusionTensor<R>,
    value: &FusionTensor<R>,
    mask: Option<&FusionTensor<R>>,
    config: &DilatedAttentionConfig,
    order: Option<&SequenceOrder>,
) -> Result<AttentionShape> {
    check_fused_call(
        query.shape.as_slice(),
        key.shape.as_slice(),
        value.shape.as_slice(),
        mask.map(|m| m.shape.as_slice()),
        config,
        order,
    )
}

/// Unless `submit` is lazy ([`crate::SUBMIT_ENV`]), hands the stream's queued operations,
/// ours last, to the fusion thread now, so that our operation's launches reach the device (the
/// inner backend flushes its own queue when it runs them) instead of waiting for the caller's
/// next sync. Eager waits until the fusion thread has run them; background only flushes its
/// queue and returns. Our operation is a fusion barrier, so the operations before it could not
/// have been fused with later ones.
fn submit_queued_operations<R: FusionRuntime>(client: &GlobalFusionClient<R>, submit: Submit) {
    match submit {
        Submit::Eager => client.sync(|| ()),
        Submit::Background => client.flush_queue(),
        Submit::Lazy => {}
    }
}

/// The queued forward: inputs `[q, k, v, (mask)]`, outputs `[out, lse (f32)]`.
#[derive(Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    has_mask: bool,
    config: DilatedAttentionConfig,
    order: Option<SequenceOrder>,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + DilatedAttentionBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let inputs = &self.desc.inputs;
        let mask = self
            .has_mask
            .then(|| handles.get_bool_tensor::<B>(&inputs[3]));
        let result = B::fused_dilated_attention_forward(
            handles.get_float_tensor::<B>(&inputs[0]),
            handles.get_float_tensor::<B>(&inputs[1]),
            handles.get_float_tensor::<B>(&inputs[2]),
            mask,
            &self.config,
            self.order.as_ref(),
        );
        // `check_eagerly` ran the launcher's checks on these shapes before queueing, so what
        // can fail here is the device (`DilatedAttentionError::Device`); an operation cannot
        // return an error to Fusion.
        let (output, lse) = result.unwrap_or_else(|e| panic!("fused forward: {e}"));
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, output);
        handles.register_float_tensor::<B>(&self.desc.outputs[1].id, lse);
    }
}

/// The queued backward: inputs `[q, k, v, out, lse, (mask), (grad_out), (grad_lse)]`, outputs
/// `[dq, dk, dv]`.
#[derive(Debug)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    has_mask: bool,
    has_grad_output: bool,
    has_grad_lse: bool,
    config: DilatedAttentionConfig,
    order: Option<SequenceOrder>,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + DilatedAttentionBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let ir = &self.desc.inputs;
        let query = handles.get_float_tensor::<B>(&ir[0]);
        let key = handles.get_float_tensor::<B>(&ir[1]);
        let value = handles.get_float_tensor::<B>(&ir[2]);
        let output = handles.get_float_tensor::<B>(&ir[3]);
        let lse = handles.get_float_tensor::<B>(&ir[4]);
        let mut rest = ir[5..].iter();
        let mask = self
            .has_mask
            .then(|| handles.get_bool_tensor::<B>(rest.next().expect("mask input")));
        let grad_output = self
            .has_grad_output
            .then(|| handles.get_float_tensor::<B>(rest.next().expect("grad output input")));
        let grad_lse = self
            .has_grad_lse
            .then(|| handles.get_float_tensor::<B>(rest.next().expect("grad lse input")));
        let inputs = FusedBackwardInputs {
            query,
            key,
            value,
            key_padding_mask: mask,
            output,
            lse,
            grad_output,
            grad_lse,
        };
        let result = B::fused_dilated_attention_backward(inputs, &self.config, self.order.as_ref());
        // As in the forward: only the device can fail here.
        let gradients = result.unwrap_or_else(|e| panic!("fused backward: {e}"));
        for (out, gradient) in self.desc.outputs.iter().zip(gradients) {
            handles.register_float_tensor::<B>(&out.id, gradient);
        }
    }
}

impl<B: FusionBackend + DilatedAttentionBackend> DilatedAttentionBackend for Fusion<B> {
    untracked_backend_items!();

    fn dilated_attention_with_lse(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        fused_or_reference::<Self>(query, key, value, key_padding_mask, config, None)
    }

    fn dilated_attention_along_order(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
        order: &SequenceOrder,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        fused_or_reference::<Self>(query, key, value, key_padding_mask, config, Some(order))
    }

    fn dilated_attention_kernel(
        dims: [usize; 4],
        dtype: DType,
        device: &burn::tensor::Device<Self>,
        config: &DilatedAttentionConfig,
    ) -> Result<KernelChoice> {
        B::dilated_attention_kernel(dims, dtype, device, config)
    }

    fn max_allocation_bytes(device: &burn::tensor::Device<Self>) -> Option<u64> {
        B::max_allocation_bytes(device)
    }

    fn fused_dilated_attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        key_padding_mask: Option<BoolTensor<Self>>,
        config: &DilatedAttentionConfig,
        order: Option<&SequenceOrder>,
    ) -> Result<(FloatTensor<Self>, FloatTensor<Self>)> {
        let shape = check_eagerly(
            &query,
            &key,
            &value,
            key_padding_mask.as_ref(),
            config,
            order,
        )?;
        let submit = Submit::from_env()?;
        let client = query.client.clone();
        let dtype = query.dtype;
        let mut inputs = vec![query, key, value];
        let has_mask = key_padding_mask.is_some();
        inputs.extend(key_padding_mask);
        let streams = OperationStreams::with_inputs(&inputs);
        let output = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::from(shape.dims().to_vec()),
            dtype,
        );
        let lse = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::from(vec![shape.batch, shape.seq_len, shape.num_heads]),
            DType::F32,
        );
        let input_irs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
        let desc = CustomOpIr::new("dilated_attention_forward", &input_irs, &[output, lse]);
        let op = ForwardOp::<B> {
            desc: desc.clone(),
            has_mask,
            config: config.clone(),
            order: order.cloned(),
            backend: PhantomData,
        };
        let mut outputs = client.register(streams, OperationIr::Custom(desc), op);
        submit_queued_operations(&client, submit);
        let lse = outputs.pop().expect("two outputs");
        let output = outputs.pop().expect("two outputs");
        Ok((output, lse))
    }

    fn fused_dilated_attention_backward(
        inputs: FusedBackwardInputs<Self>,
        config: &DilatedAttentionConfig,
        order: Option<&SequenceOrder>,
    ) -> Result<[FloatTensor<Self>; 3]> {
        let FusedBackwardInputs {
            query,
            key,
            value,
            key_padding_mask,
            output,
            lse,
            grad_output,
            grad_lse,
        } = inputs;
        let shape = check_eagerly(
            &query,
            &key,
            &value,
            key_padding_mask.as_ref(),
            config,
            order,
        )?;
        let submit = Submit::from_env()?;
        let client = query.client.clone();
        let dtype = query.dtype;
        let has_mask = key_padding_mask.is_some();
        let has_grad_output = grad_output.is_some();
        let has_grad_lse = grad_lse.is_some();
        let mut inputs = vec![query, key, value, output, lse];
        inputs.extend(key_padding_mask);
        inputs.extend(grad_output);
        inputs.extend(grad_lse);
        let streams = OperationStreams::with_inputs(&inputs);
        let gradient = || {
            TensorIr::uninit(
                client.create_empty_handle(),
                Shape::from(shape.dims().to_vec()),
                dtype,
            )
        };
        let outputs = [gradient(), gradient(), gradient()];
        let input_irs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
        let desc = CustomOpIr::new("dilated_attention_backward", &input_irs, &outputs);
        let op = BackwardOp::<B> {
            desc: desc.clone(),
            has_mask,
            has_grad_output,
            has_grad_lse,
            config: config.clone(),
            order: order.cloned(),
            backend: PhantomData,
        };
        let outputs = client.register(streams, OperationIr::Custom(desc), op);
        submit_queued_operations(&client, submit);
        let [dq, dk, dv]: [FusionTensor<_>; 3] = outputs
            .try_into()
            .unwrap_or_else(|_| unreachable!("three outputs registered"));
        Ok([dq, dk, dv])
    }
}
