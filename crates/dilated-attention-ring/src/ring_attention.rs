//! [`RingDilatedAttention`]: sequence-parallel dilated attention.

use core::any::Any;
use core::marker::PhantomData;
use std::sync::Arc;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, ElementConversion, Tensor, TensorPrimitive};
use dilated_attention_core::{
    AttentionShape, DilatedAttentionConfig, DilatedAttentionError, DilatedIndexPlan, DilationMode,
    Result, check_attention_inputs, merge_by_lse,
};
use dilated_attention_kernels::{DilatedAttentionBackend, dilated_attention_with_lse_masked};
use serde::{Deserialize, Serialize};

use crate::block::{narrow_to, wide};
use crate::memory_guard::{CallPath, batch_chunks, estimate_call_bytes};
use crate::shard_check::check_shard_lengths;
use crate::shard_plan::ShardPlan;
use crate::sharded_attention::ShardedAttention;
use crate::{Communicator, ShardLayout};

/// How the sequence is cut into shards when the module is not given a [`ShardLayout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShardOrder {
    /// Rank `i` holds the `i`-th contiguous block.
    Contiguous,
    /// Rank `i` holds chunks `i` and `2w - 1 - i` of `2w` ([`ShardLayout::zigzag`]): balanced
    /// causal work.
    Zigzag,
}

/// Config of [`RingDilatedAttention`].
#[derive(Config, Debug)]
pub struct RingDilatedAttentionConfig {
    /// The dilated attention every rank computes its part of.
    pub attention: DilatedAttentionConfig,
    /// How shards are cut when no explicit layout is set. Default: contiguous.
    #[config(default = "ShardOrder::Contiguous")]
    pub shard_order: ShardOrder,
    /// The production checks: NaN/Inf in inputs and outputs are errors naming the tensor and
    /// the rank, and every call verifies that the ranks' shard lengths agree with the layout.
    /// Default: false.
    #[config(default = false)]
    pub fault_checks: bool,
    /// With `fault_checks`: the most memory one call may allocate on a rank beyond its inputs
    /// (by the estimate of `docs/architecture.md`'s memory models). A larger batch runs in
    /// chunks; a call over the limit even for one batch element is a
    /// [`MemoryLimit`](DilatedAttentionError::MemoryLimit) error instead of an out-of-memory
    /// crash. Default: none.
    pub memory_limit_bytes: Option<u64>,
    /// Start each step's key/value transfer before the previous step's blocks are queued, so
    /// that transfers overlap compute where the communicator allows
    /// ([`Communicator::start_exchange`]). `false` runs transfer and compute in turn (to measure
    /// what the overlap buys). Default: true.
    #[config(default = true)]
    pub overlap: bool,
}

/// Dilated attention over a sequence sharded across ranks, with the
/// same outputs and gradients as one device.
///
/// Each rank calls the module with its shard `[batch, local seq, heads, head_dim]` (from
/// [`ShardLayout::shard`]) at the same time; the module returns the rank's rows of the output
/// and log-sum-exp. When every segment of every pair lies inside one rank's shard (LongNet's
/// configs at long sequences: segments up to `seq / world`), each rank runs the single-device
/// path on its shard, with no communication at all (the fused kernels where the backend has
/// them). Otherwise the sharded algorithm runs (owned segments locally, shared ones step by
/// step), and under `Autodiff` its own backward sends key/value gradients back to their owners.
///
/// ```
/// use std::{sync::Arc, thread};
/// use burn::backend::NdArray;
/// use burn::tensor::{Distribution, Tensor};
/// use dilated_attention_core::{reference_dilated_attention, DilatedAttentionConfig};
/// use dilated_attention_ring::{
///     Communicator, InProcessCommunicator, RingDilatedAttentionConfig, ShardLayout,
/// };
///
/// type B = NdArray;
/// let device = Default::default();
/// // one segment of 64 spans both ranks: they exchange their dilated rows
/// let cfg = DilatedAttentionConfig::new(vec![16, 64], vec![1, 2]).with_causal(true);
/// let x = Tensor::<B, 4>::random([1, 64, 2, 8], Distribution::Default, &device);
/// let layout = ShardLayout::contiguous(64, 2)?;
///
/// let ranks = InProcessCommunicator::<B>::group(vec![device; 2]);
/// let shards: Vec<Tensor<B, 4>> = thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .into_iter()
///         .map(|comm| {
///             let (cfg, layout, x) = (cfg.clone(), layout.clone(), x.clone());
///             s.spawn(move || {
///                 let rank = comm.rank();
///                 let ring = RingDilatedAttentionConfig::new(cfg).init::<B>(Arc::new(comm));
///                 let mine = layout.shard(x, rank).expect("x has the layout's length");
///                 ring.forward(mine.clone(), mine.clone(), mine)
///             })
///         })
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// let (want, _) = reference_dilated_attention(x.clone(), x.clone(), x, None, &cfg)?;
/// let got = layout.unshard(shards);
/// assert!((got - want).abs().max().into_scalar() < 1e-5);
/// # Ok::<(), dilated_attention_core::DilatedAttentionError>(())
/// ```
///
/// # Memory and traffic per rank
/// Owned segments cost what the single-device path costs on the shard. For shared segments the
/// forward holds this rank's shared query rows, one received key/value block, and one chunk of
/// scores (at most [`SCORE_BUDGET_ELEMENTS`](dilated_attention_core::SCORE_BUDGET_ELEMENTS)) at a
/// time. The forward receives, per (pair, offset group), the rows of the shared segments its
/// queries need: at most `2 * batch * (s_i / r_i) * heads_in_group * head_dim` elements per
/// shared segment (keys and values), whatever the world size; the backward receives them again
/// and sends as many gradients back.
#[derive(Module, Debug)]
pub struct RingDilatedAttention<B: Backend> {
    #[module(skip)]
    config: RingDilatedAttentionConfig,
    #[module(skip)]
    communicator: CommunicatorHandle,
    #[module(skip)]
    layout: Option<ShardLayout>,
    _backend: PhantomData<B>,
}

impl RingDilatedAttentionConfig {
    /// Validates the config and builds the module for this rank.
    ///
    /// # Errors
    /// The attention config's errors.
    pub fn try_init<B: DilatedAttentionBackend>(
        &self,
        communicator: Arc<dyn Communicator<B::Inner>>,
    ) -> Result<RingDilatedAttention<B>> {
        self.attention.validate()?;
        Ok(RingDilatedAttention {
            config: self.clone(),
            communicator: CommunicatorHandle::new(communicator),
            layout: None,
            _backend: PhantomData,
        })
    }

    /// Builds the module for this rank.
    ///
    /// # Panics
    /// If the config is invalid, with the message of [`Self::try_init`]'s error.
    pub fn init<B: DilatedAttentionBackend>(
        &self,
        communicator: Arc<dyn Communicator<B::Inner>>,
    ) -> RingDilatedAttention<B> {
        self.try_init(communicator)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<B: Backend> RingDilatedAttention<B> {
    /// The config the module was built from.
    pub fn config(&self) -> &RingDilatedAttentionConfig {
        &self.config
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.communicator.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.communicator.world_size
    }

    /// Uses `layout` (any shard lengths, zigzag, ...) instead of the config's [`ShardOrder`].
    ///
    /// # Errors
    /// [`InvalidShards`](DilatedAttentionError::InvalidShards) when the layout's world size is not
    /// the communicator's.
    pub fn with_layout(mut self, layout: ShardLayout) -> Result<Self> {
        if layout.world_size() != self.communicator.world_size {
            return Err(DilatedAttentionError::InvalidShards {
                reason: format!(
                    "the layout has {} ranks but the communicator has {}",
                    layout.world_size(),
                    self.communicator.world_size
                ),
            });
        }
        self.layout = Some(layout);
        Ok(self)
    }

    /// The layout of a call whose local length is `local_len`: the one set with
    /// [`Self::with_layout`], else the config's [`ShardOrder`] over `local_len * world_size`
    /// tokens.
    ///
    /// # Errors
    /// [`InvalidShards`](DilatedAttentionError::InvalidShards) when the order cannot cut that
    /// sequence.
    pub fn layout_for(&self, local_len: usize) -> Result<ShardLayout> {
        if let Some(layout) = &self.layout {
            return Ok(layout.clone());
        }
        let world = self.communicator.world_size;
        match self.config.shard_order {
            ShardOrder::Contiguous => ShardLayout::contiguous(local_len * world, world),
            ShardOrder::Zigzag => ShardLayout::zigzag(local_len * world, world),
        }
    }
}

impl<B: DilatedAttentionBackend> RingDilatedAttention<B> {
    /// This rank's communicator.
    ///
    /// # Errors
    /// [`Unsupported`](DilatedAttentionError::Unsupported) when the module was converted to
    /// another backend than its communicator's (`valid()` of an `Autodiff` module keeps it).
    pub fn communicator(&self) -> Result<Arc<dyn Communicator<B::Inner>>> {
        self.communicator.get::<B::Inner>()
    }

    /// This rank's output rows.
    ///
    /// # Panics
    /// On any error of [`Self::try_forward_with_lse`], with its message.
    pub fn forward(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        self.try_forward_with_lse(query, key, value, None)
            .map(|(out, _)| out)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// This rank's output rows, with errors as values.
    ///
    /// # Errors
    /// See [`Self::try_forward_with_lse`].
    pub fn try_forward(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        self.try_forward_with_lse(query, key, value, None)
            .map(|(out, _)| out)
    }

    /// This rank's output rows `[batch, local seq, heads, head_dim]` and log-sum-exp
    /// `[batch, local seq, heads]`, with an optional key padding mask of this rank's tokens
    /// (`[batch, local seq]`, true = padded). Every rank must call it at the same time with
    /// shards of the same batch, heads and head dim.
    ///
    /// # Errors
    /// Shape and config errors; [`ShardMismatch`](DilatedAttentionError::ShardMismatch) when the
    /// local length is not the layout's; communication failures and timeouts (a failed peer is
    /// an error, not a hang); with `fault_checks`, [`NonFinite`](DilatedAttentionError::NonFinite)
    /// and shard lengths that differ between ranks.
    pub fn try_forward_with_lse(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        key_padding_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
        let attention = &self.config.attention;
        attention.validate()?;
        let shape = check_attention_inputs(&query, &key, &value, key_padding_mask.as_ref())?;
        let communicator = self.communicator()?;
        let rank = communicator.rank();
        let layout = self.layout_for(shape.seq_len)?;
        if layout.local_len(rank) != shape.seq_len {
            return Err(DilatedAttentionError::ShardMismatch {
                name: "query",
                rank,
                expected: layout.local_len(rank),
                actual: shape.seq_len,
            });
        }
        if self.config.fault_checks {
            check_shard_lengths(communicator.as_ref(), &layout, shape.seq_len, query.dtype())?;
            for (name, t) in [("query", &query), ("key", &key), ("value", &value)] {
                self.check_finite(name, t.clone())?;
            }
        }
        let index = DilatedIndexPlan::new(attention, layout.seq_len(), shape.num_heads)?;
        let local: Vec<bool> = index
            .pairs()
            .iter()
            .map(|pair| shard_aligned(pair.segment_length, &layout))
            .collect();
        if attention.dropout > 0.0
            && local.iter().any(|&aligned| !aligned)
            && B::ad_enabled(&query.device())
        {
            return Err(DilatedAttentionError::Unsupported {
                kind: "dropout on the ring's sharded pairs".into(),
                reason: format!(
                    "dropout {} while training applies to shard-local pairs only; a pair whose \
                     segments cross ranks has none. Set dropout to 0, or use shards that are \
                     multiples of every segment length",
                    attention.dropout
                ),
            });
        }
        let chunks = match (self.config.fault_checks, self.config.memory_limit_bytes) {
            (true, Some(limit)) => {
                self.batch_chunks(&query, &index, &layout, &local, shape, limit)?
            }
            _ => 1,
        };
        let (out, lse) = if chunks == 1 {
            let call = ShardCall {
                layout: &layout,
                shape,
            };
            self.attend(query, key, value, key_padding_mask, call, &local)?
        } else {
            // batch elements are independent: run the call chunk by chunk
            let step = shape.batch.div_ceil(chunks);
            let mut outs = Vec::with_capacity(chunks);
            let mut lses = Vec::with_capacity(chunks);
            for start in (0..shape.batch).step_by(step) {
                let len = step.min(shape.batch - start);
                let part = AttentionShape {
                    batch: len,
                    ..shape
                };
                let cut = |t: &Tensor<B, 4>| t.clone().narrow(0, start, len);
                let mask = key_padding_mask
                    .as_ref()
                    .map(|m| m.clone().narrow(0, start, len));
                let call = ShardCall {
                    layout: &layout,
                    shape: part,
                };
                let (o, l) =
                    self.attend(cut(&query), cut(&key), cut(&value), mask, call, &local)?;
                outs.push(o);
                lses.push(l);
            }
            (Tensor::cat(outs, 0), Tensor::cat(lses, 0))
        };
        if self.config.fault_checks {
            self.check_finite("output", out.clone())?;
        }
        Ok((out, lse))
    }

    /// One call over (a batch chunk of) the shard: shard-local pairs on the single-device path,
    /// the others sharded.
    fn attend(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        mask: Option<Tensor<B, 2, Bool>>,
        call: ShardCall<'_>,
        local: &[bool],
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
        let attention = &self.config.attention;
        Ok(if local.iter().all(|&l| l) {
            // every segment inside a shard: the single-device path (fused kernels) on the shard
            dilated_attention_with_lse_masked(query, key, value, mask, attention)?
        } else if attention.mode == DilationMode::LongNet && local.iter().any(|&l| l) {
            // LongNet: local pairs on the single-device path, the others sharded, merged by LSE
            let (near, far) = split_pairs(attention, local);
            let (o1, l1) = dilated_attention_with_lse_masked(
                query.clone(),
                key.clone(),
                value.clone(),
                mask.clone(),
                &near,
            )?;
            let (o2, l2) = self.sharded(query, key, value, mask, &far, call)?;
            let dtype = o1.dtype();
            let (out, lse) = merge_by_lse(vec![(wide(o1), wide(l1)), (wide(o2), wide(l2))]);
            (narrow_to(out, dtype), narrow_to(lse, dtype))
        } else {
            self.sharded(query, key, value, mask, attention, call)?
        })
    }

    /// The memory guard's estimate of what a call with inputs of `dims` (this rank's
    /// `[batch, local seq, heads, head_dim]`) on `device` allocates beyond its inputs, for the
    /// longest shard of the layout (so every rank gets the same answer).
    ///
    /// # Errors
    /// Shape, config and layout errors.
    pub fn estimated_call_bytes(
        &self,
        dims: [usize; 4],
        dtype: DType,
        device: &B::Device,
    ) -> Result<u64> {
        let shape = AttentionShape::from_dims("query", &dims)?;
        let layout = self.layout_for(shape.seq_len)?;
        let index =
            DilatedIndexPlan::new(&self.config.attention, layout.seq_len(), shape.num_heads)?;
        let local: Vec<bool> = index
            .pairs()
            .iter()
            .map(|pair| shard_aligned(pair.segment_length, &layout))
            .collect();
        Ok(self
            .estimator(&index, &layout, &local, shape, dtype, device)(
            shape.batch,
        ))
    }

    /// The estimate as a function of the batch size.
    fn estimator<'a>(
        &self,
        index: &'a DilatedIndexPlan,
        layout: &ShardLayout,
        local: &[bool],
        shape: AttentionShape,
        dtype: DType,
        device: &B::Device,
    ) -> impl Fn(usize) -> u64 + 'a {
        let attention = &self.config.attention;
        let longest = (0..layout.world_size())
            .map(|r| layout.local_len(r))
            .max()
            .unwrap_or(shape.seq_len);
        let worst = AttentionShape {
            seq_len: longest,
            ..shape
        };
        let sharded = !local.iter().all(|&l| l);
        let fused = B::dilated_attention_kernel(worst.dims(), dtype, device, attention)
            .is_ok_and(|choice| choice.is_fused());
        let path = if fused {
            CallPath::Fused
        } else if B::ad_enabled(device) {
            CallPath::ReferenceTraining
        } else {
            CallPath::Reference
        };
        let bytes = dtype.size();
        move |batch: usize| {
            let part = AttentionShape { batch, ..worst };
            estimate_call_bytes(&part, index, path, sharded, bytes)
        }
    }

    /// The memory guard: how many batch chunks keep the call under `limit` on every rank.
    fn batch_chunks(
        &self,
        query: &Tensor<B, 4>,
        index: &DilatedIndexPlan,
        layout: &ShardLayout,
        local: &[bool],
        shape: AttentionShape,
        limit: u64,
    ) -> Result<usize> {
        let estimate = self.estimator(index, layout, local, shape, query.dtype(), &query.device());
        batch_chunks(shape.batch, limit, &estimate).ok_or(DilatedAttentionError::MemoryLimit {
            rank: self.communicator.rank,
            needed: estimate(1),
            limit,
        })
    }

    /// The sharded algorithm over `config`'s pairs, as one differentiable step.
    fn sharded(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        key_padding_mask: Option<Tensor<B, 2, Bool>>,
        config: &DilatedAttentionConfig,
        call: ShardCall<'_>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
        let ShardCall { layout, shape } = call;
        let communicator = self.communicator()?;
        let rank = communicator.rank();
        let index = DilatedIndexPlan::new(config, layout.seq_len(), shape.num_heads)?;
        let function = ShardedAttention {
            communicator,
            layout: layout.clone(),
            plan: ShardPlan::new(&index, layout, rank)?,
            config: config.clone(),
            overlap: self.config.overlap,
            shape,
            key_padding_mask: key_padding_mask
                .map(|m| Tensor::from_primitive(B::inner_bool(m.into_primitive()))),
        };
        let (out, lse) = B::custom_attention(
            Arc::new(function),
            query.into_primitive().tensor(),
            key.into_primitive().tensor(),
            value.into_primitive().tensor(),
        )?;
        let out: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(out));
        // the sharded op's LSE is f32 (kept so for its backward); callers get the output's dtype
        let lse = narrow_to(
            Tensor::from_primitive(TensorPrimitive::Float(lse)),
            out.dtype(),
        );
        Ok((out, lse))
    }

    fn check_finite<const D: usize>(&self, name: &'static str, t: Tensor<B, D>) -> Result<()> {
        let bad = t.clone().is_nan().int().sum() + t.is_inf().int().sum();
        let count = bad.into_scalar().elem::<i64>() as usize;
        if count > 0 {
            return Err(DilatedAttentionError::NonFinite {
                name,
                rank: self.communicator.rank,
                count,
            });
        }
        Ok(())
    }
}

/// Where one call over this rank's shard sits: the layout of the whole sequence and the call's
/// local shape (a batch chunk's, when the memory guard splits the batch).
#[derive(Clone, Copy)]
struct ShardCall<'a> {
    layout: &'a ShardLayout,
    shape: AttentionShape,
}

/// A communicator of any backend, type-erased so that the module's autodiff and inner versions
/// (`Autodiff<B>` and `B`, whose inner backends are both `B`) share it.
#[derive(Clone)]
struct CommunicatorHandle {
    any: Arc<dyn Any + Send + Sync>,
    rank: usize,
    world_size: usize,
    debug: String,
}

impl CommunicatorHandle {
    fn new<B: Backend>(communicator: Arc<dyn Communicator<B>>) -> Self {
        Self {
            rank: communicator.rank(),
            world_size: communicator.world_size(),
            debug: format!("{communicator:?}"),
            any: Arc::new(communicator),
        }
    }

    fn get<B: Backend>(&self) -> Result<Arc<dyn Communicator<B>>> {
        self.any
            .downcast_ref::<Arc<dyn Communicator<B>>>()
            .cloned()
            .ok_or_else(|| DilatedAttentionError::Unsupported {
                kind: "ring".into(),
                reason: format!(
                    "the module's communicator ({}) runs on another backend than {}",
                    self.debug,
                    core::any::type_name::<B>()
                ),
            })
    }
}

impl core::fmt::Debug for CommunicatorHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.debug)
    }
}

/// Whether every rank's shard, run alone, selects the same segments of length `s` as the whole
/// sequence: ranges in increasing order, each starting at a multiple of `s` (globally and in
/// local coordinates) and ending at one or at the sequence's end. Then no segment crosses a
/// shard and the pair needs no communication.
fn shard_aligned(s: usize, layout: &ShardLayout) -> bool {
    let n = layout.seq_len();
    (0..layout.world_size()).all(|rank| {
        let ranges = layout.ranges(rank);
        let mut base = 0;
        ranges.iter().enumerate().all(|(i, r)| {
            let ok = (i == 0 || ranges[i - 1].end <= r.start)
                && r.start % s == 0
                && base % s == 0
                && (r.end % s == 0 || (r.end == n && i + 1 == ranges.len()));
            base += r.len();
            ok
        })
    })
}

/// The config's pairs split by `local[i]`: (local pairs, the others).
fn split_pairs(
    config: &DilatedAttentionConfig,
    local: &[bool],
) -> (DilatedAttentionConfig, DilatedAttentionConfig) {
    let pick = |want: bool| {
        let mut part = config.clone();
        let (segments, rates) = config
            .segment_lengths
            .iter()
            .zip(&config.dilation_rates)
            .zip(local)
            .filter(|(_, l)| **l == want)
            .map(|((s, r), _)| (*s, *r))
            .unzip();
        part.segment_lengths = segments;
        part.dilation_rates = rates;
        part
    };
    (pick(true), pick(false))
}
