//! The one error type of the library: every bad config value and every bad input shape.

use thiserror::Error;

/// Everything that can be wrong with a config or an input, as a value.
///
/// Each variant names the field (or the tensor) and carries the offending values, so the
/// message alone tells the user what to change. No call of this library panics on user data:
/// the panicking variants (`forward`, `init`) only unwrap these errors.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DilatedAttentionError {
    /// `segment_lengths` holds no value.
    #[error("segment_lengths is empty; give at least one (segment_length, dilation_rate) pair")]
    EmptySegments,
    /// `segment_lengths` and `dilation_rates` differ in length.
    #[error(
        "segment_lengths has {segments} values but dilation_rates has {rates}; they form pairs and must be equally long"
    )]
    PairCountMismatch {
        /// `segment_lengths.len()`.
        segments: usize,
        /// `dilation_rates.len()`.
        rates: usize,
    },
    /// A segment length is zero.
    #[error("segment_lengths[{index}] is 0; segment lengths must be >= 1")]
    ZeroSegmentLength {
        /// Position in `segment_lengths`.
        index: usize,
    },
    /// A dilation rate is zero.
    #[error("dilation_rates[{index}] is 0; rates must be >= 1")]
    ZeroDilation {
        /// Position in `dilation_rates`.
        index: usize,
    },
    /// The softmax scale is not a finite positive number.
    #[error("scale is {value}; it must be finite and > 0 (or unset for 1/sqrt(head_dim))")]
    InvalidScale {
        /// The value given.
        value: f64,
    },
    /// A value that must be finite and positive (a gain, an epsilon, a base) is not.
    #[error("{field} is {value}; it must be finite and > 0")]
    InvalidPositive {
        /// Name of the config field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A probability (dropout) outside `[0, 1)`.
    #[error("{field} is {value}; it must be in [0, 1)")]
    InvalidProbability {
        /// Name of the config field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A ratio (sparsity) outside `(0, 1]`.
    #[error("{field} is {value}; it must be in (0, 1]")]
    InvalidRatio {
        /// Name of the config field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A size that must be at least one is zero.
    #[error("{field} is 0; it must be >= 1")]
    ZeroSize {
        /// Name of the field or dimension.
        field: &'static str,
    },
    /// A dimension that must divide another does not.
    #[error("{field} = {value} is not divisible by {divisor_field} = {divisor}")]
    NotDivisible {
        /// Name of the dividend.
        field: &'static str,
        /// Its value.
        value: usize,
        /// Name of the divisor.
        divisor_field: &'static str,
        /// Its value.
        divisor: usize,
    },
    /// `HeadGrouped` mode needs at least one head per pair.
    #[error(
        "HeadGrouped mode splits {heads} heads into {groups} groups (one per pair): give at least as many heads as pairs"
    )]
    TooFewHeads {
        /// Number of heads of the input.
        heads: usize,
        /// Number of (segment, dilation) pairs.
        groups: usize,
    },
    /// A tensor has a shape that does not match the query's.
    #[error("{name} shape {actual:?} does not match query shape {query:?}")]
    ShapeMismatch {
        /// Which tensor (`key`, `value`).
        name: &'static str,
        /// The query's shape `[batch, seq, heads, head_dim]`.
        query: [usize; 4],
        /// The other tensor's shape.
        actual: [usize; 4],
    },
    /// A tensor's dtype differs from the query's.
    #[error(
        "{name} is {actual:?} but query is {query:?}; query, key and value of one call must share one float dtype (cast one of them)"
    )]
    DTypeMismatch {
        /// Which tensor (`key`, `value`).
        name: &'static str,
        /// The query's dtype.
        query: burn::tensor::DType,
        /// The other tensor's dtype.
        actual: burn::tensor::DType,
    },
    /// An input's float dtype is not the dtype of the module's parameters (projections, norms).
    #[error(
        "{name} is {actual:?} but the module's parameters are {parameters:?}; cast the input to {parameters:?}"
    )]
    ParameterDTypeMismatch {
        /// Which input (`query`, `key`, `value`, `x`).
        name: &'static str,
        /// The parameters' dtype.
        parameters: burn::tensor::DType,
        /// The input's dtype.
        actual: burn::tensor::DType,
    },
    /// A tensor lives on another device than the query.
    #[error(
        "{name} is on device {actual} but query is on {query}; move the inputs of one call to one device"
    )]
    DeviceMismatch {
        /// Which tensor (`key`, `value`, `key_padding_mask`).
        name: &'static str,
        /// The query's device, as its `Debug` form.
        query: String,
        /// The other tensor's device.
        actual: String,
    },
    /// A tensor has a zero-sized dimension.
    #[error("{name} has {dim} = 0 in shape {shape:?}; every dimension must be >= 1")]
    EmptyDimension {
        /// Which tensor.
        name: &'static str,
        /// Which dimension.
        dim: &'static str,
        /// The full shape.
        shape: Vec<usize>,
    },
    /// A tensor has the wrong number of dimensions.
    #[error("{name} has rank {actual} (shape {shape:?}); expected rank {expected} {layout}")]
    WrongRank {
        /// Which tensor.
        name: &'static str,
        /// Rank required.
        expected: usize,
        /// Rank given.
        actual: usize,
        /// The layout required, for the message.
        layout: &'static str,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// The key padding mask does not have shape `[batch, seq]`.
    #[error("key_padding_mask shape {actual:?} does not match [batch, seq] = {expected:?}")]
    MaskShapeMismatch {
        /// `[batch, seq]` of the query.
        expected: [usize; 2],
        /// The mask's shape.
        actual: [usize; 2],
    },
    /// The embedding width does not match the module's.
    #[error("{name} has embed_dim {actual}; the module was built for {expected}")]
    EmbedDimMismatch {
        /// Which input.
        name: &'static str,
        /// The module's `embed_dim`.
        expected: usize,
        /// The input's last dimension.
        actual: usize,
    },
    /// Multihead attention needs queries, keys and values of one sequence length.
    #[error(
        "dilated attention attends within segments of one sequence: query has seq {query}, {name} has seq {actual}"
    )]
    SequenceMismatch {
        /// Which input.
        name: &'static str,
        /// The query's sequence length.
        query: usize,
        /// The other's.
        actual: usize,
    },
    /// A token id is outside the vocabulary.
    #[error(
        "token id {token} at flat position {position} is outside the vocabulary of {vocab_size}"
    )]
    TokenOutOfRange {
        /// The offending id.
        token: i64,
        /// Its flat index in the token tensor.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The requested capability has not been built yet.
    #[error("attention kind `{kind}` is not available in this build: {reason}")]
    Unsupported {
        /// The kind asked for.
        kind: String,
        /// Why, and where it will come from.
        reason: String,
    },
    /// A collective or point-to-point transfer between ranks failed (the peer is gone, or the
    /// two sides disagree on what is sent).
    #[error("rank {rank}: {operation} with rank {peer} failed: {reason}")]
    Communication {
        /// The rank that saw the failure.
        rank: usize,
        /// The other side.
        peer: usize,
        /// Which transfer.
        operation: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A failure inside one step of the ring (a transfer or a piece of compute), with where it
    /// happened. Under `Autodiff` the ring's backward cannot return an error: it panics with this
    /// message.
    #[error("rank {rank}, ring step {step} of the {phase}: {cause}")]
    RingStep {
        /// The rank that failed.
        rank: usize,
        /// The step (`0..world_size`; step `t` exchanges with ranks `rank +- t`).
        step: usize,
        /// `forward` or `backward`.
        phase: &'static str,
        /// What failed.
        cause: Box<DilatedAttentionError>,
    },
    /// A transfer waited longer than the communicator's timeout.
    #[error(
        "rank {rank}: {operation} waited {waited_ms} ms for rank {peer} and gave up; the peer may have failed or be running a different schedule"
    )]
    CommunicationTimeout {
        /// The rank that waited.
        rank: usize,
        /// The rank it waited for.
        peer: usize,
        /// Which transfer.
        operation: &'static str,
        /// How long it waited.
        waited_ms: u64,
    },
    /// A shard layout that does not cover the sequence exactly once.
    #[error("invalid shard layout: {reason}")]
    InvalidShards {
        /// What is wrong, with the values.
        reason: String,
    },
    /// A rank's local tensor does not have the length the shard layout gives it.
    #[error(
        "rank {rank}: {name} holds {actual} tokens but the shard layout gives this rank {expected}"
    )]
    ShardMismatch {
        /// Which input.
        name: &'static str,
        /// The rank.
        rank: usize,
        /// The layout's local length.
        expected: usize,
        /// The tensor's sequence length.
        actual: usize,
    },
    /// A call would need more device memory than the configured limit, even one batch element
    /// at a time (the production ring's memory guard).
    #[error(
        "rank {rank}: the call needs about {needed} bytes per batch element beyond its inputs, over the memory limit of {limit} bytes; use more ranks, a shorter sequence, or a higher limit"
    )]
    MemoryLimit {
        /// The rank.
        rank: usize,
        /// Estimated bytes for one batch element.
        needed: u64,
        /// The configured limit.
        limit: u64,
    },
    /// One buffer of the call would be larger than the device allocates at once: the call is
    /// refused before anything is queued (a failed allocation would stop the device's thread).
    #[error(
        "the call would allocate {what} of {bytes} bytes in one buffer; this device allocates at most {limit} bytes at once: use shorter segments, more dilation, a fused kernel (head_dim <= 256) or the ring"
    )]
    AllocationTooLarge {
        /// Which buffer.
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// The device's largest allocation.
        limit: u64,
    },
    /// Two options that exclude each other were both set.
    #[error("{first} and {second} are both set; set at most one")]
    ConflictingOptions {
        /// One option.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A size above what the call supports (e.g. the quantisation grid of a point cloud).
    #[error("{field} is {value}; the most this call supports is {limit}")]
    TooLarge {
        /// What is too large.
        field: &'static str,
        /// The value given.
        value: usize,
        /// The largest value supported.
        limit: usize,
    },
    /// A sequence order that is not a permutation of its positions.
    #[error(
        "sequence order entry {index} is {value}: an order of {len} positions must list each of 0..{len} exactly once"
    )]
    NotAPermutation {
        /// The first entry that is out of range or repeated.
        index: usize,
        /// Its value.
        value: usize,
        /// The order's length.
        len: usize,
    },
    /// NaN or infinite values where finite ones are required (the production ring's checks).
    #[error("rank {rank}: {name} has {count} non-finite values (NaN or Inf)")]
    NonFinite {
        /// Which tensor.
        name: &'static str,
        /// The rank.
        rank: usize,
        /// How many values are not finite.
        count: usize,
    },
    /// The device reported an error when a call handed its launches over: one of them failed,
    /// or an earlier operation on the same stream did.
    #[error("the device reported an error while submitting {operation}: {reason}")]
    Device {
        /// Which call.
        operation: &'static str,
        /// The device's message.
        reason: String,
    },
    /// The kernel strategy asked for (in the config or through `DILATED_ATTENTION_KERNEL`)
    /// cannot run this call on this backend and device.
    #[error("kernel strategy {strategy:?} cannot run this call: {reason}")]
    KernelUnavailable {
        /// The strategy asked for.
        strategy: crate::KernelStrategy,
        /// What the call or the device lacks, with the values.
        reason: String,
    },
    /// An environment variable of this library holds a value it does not know.
    #[error("environment variable {variable} is {value:?}; expected one of: {expected}")]
    InvalidEnvironment {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// The values it takes.
        expected: &'static str,
    },
}

/// Result alias of this library.
pub type Result<T, E = DilatedAttentionError> = core::result::Result<T, E>;
