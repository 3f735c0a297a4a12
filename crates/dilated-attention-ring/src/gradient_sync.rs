//! [`all_reduce_gradients`]: sums the gradients of a module's replicated parameters over the
//! ranks, the step that makes sequence-parallel training equal to one device.
//!
//! Under sequence parallelism every rank holds the same parameters and computes the loss of its
//! own tokens; the gradient of the whole loss is the sum of the ranks' gradients. After
//! `loss.backward()` and [`GradientsParams::from_grads`], call this on every rank before the
//! optimizer step. `dilated-attention-multihead`'s `tests/sequence_parallel.rs` trains a multihead
//! layer on two ranks this way.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use dilated_attention_core::Result;

use crate::Communicator;

/// Replaces every parameter gradient of `module` in `grads` by its sum over the ranks of
/// `communicator` (one all-reduce per parameter, in the module's visiting order, so every rank
/// must pass the same module structure). A parameter without a gradient on this rank
/// contributes zeros, so ranks stay in step.
///
/// # Errors
/// The communicator's errors.
pub fn all_reduce_gradients<B, M>(
    module: &M,
    mut grads: GradientsParams,
    communicator: &dyn Communicator<B::InnerBackend>,
) -> Result<GradientsParams>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let mut collect = ParamShapes::default();
    module.visit(&mut collect);
    for (id, shape) in collect.params {
        let numel: usize = shape.iter().product();
        let local: Tensor<B::InnerBackend, 1> = match remove_any(&mut grads, id, shape.len()) {
            Some(g) => g,
            None => Tensor::from_data(
                TensorData::new(vec![0.0f32; numel], [numel]),
                communicator.device(),
            ),
        };
        let summed = communicator.all_reduce_sum(local)?;
        register_any::<B>(&mut grads, id, summed, &shape);
    }
    Ok(grads)
}

/// The float parameters of a module: id and shape.
#[derive(Default)]
struct ParamShapes {
    params: Vec<(burn::module::ParamId, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ParamShapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params.push((param.id, param.val().dims().to_vec()));
    }
}

/// A parameter's gradient, flattened, whatever its rank (1 to 6).
fn remove_any<B: burn::tensor::backend::Backend>(
    grads: &mut GradientsParams,
    id: burn::module::ParamId,
    rank: usize,
) -> Option<Tensor<B, 1>> {
    fn flat<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
        let n = t.shape().num_elements();
        t.reshape([n])
    }
    match rank {
        1 => grads.remove::<B, 1>(id).map(flat),
        2 => grads.remove::<B, 2>(id).map(flat),
        3 => grads.remove::<B, 3>(id).map(flat),
        4 => grads.remove::<B, 4>(id).map(flat),
        5 => grads.remove::<B, 5>(id).map(flat),
        6 => grads.remove::<B, 6>(id).map(flat),
        _ => None,
    }
}

fn register_any<B: AutodiffBackend>(
    grads: &mut GradientsParams,
    id: burn::module::ParamId,
    flat: Tensor<B::InnerBackend, 1>,
    shape: &[usize],
) {
    match shape.len() {
        1 => grads.register::<B::InnerBackend, 1>(id, flat.reshape([shape[0]])),
        2 => grads.register::<B::InnerBackend, 2>(id, flat.reshape([shape[0], shape[1]])),
        3 => grads.register::<B::InnerBackend, 3>(id, flat.reshape([shape[0], shape[1], shape[2]])),
        4 => grads.register::<B::InnerBackend, 4>(
            id,
            flat.reshape([shape[0], shape[1], shape[2], shape[3]]),
        ),
        5 => grads.register::<B::InnerBackend, 5>(
            id,
            flat.reshape([shape[0], shape[1], shape[2], shape[3], shape[4]]),
        ),
        6 => grads.register::<B::InnerBackend, 6>(
            id,
            flat.reshape([shape[0], shape[1], shape[2], shape[3], shape[4], shape[5]]),
        ),
        _ => {}
    }
}
