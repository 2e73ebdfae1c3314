//! The graph: models describe their computation as a list of ops over 2-D f32
//! tensors; the planner gives every tensor a slice of one preallocated arena;
//! the executor runs the ops on a backend.
//!
//! Every tensor is `[rows, cols]`, row-major. A packed batch of sequences of
//! different lengths is a tensor whose rows are the sequences one after the
//! other, described by a `Segments` table (cumulative row offsets), as in
//! FlashAttention's `cu_seqlens`: no padding anywhere.

mod executor;
mod ir;
mod ops;
mod planner;

pub use executor::Executor;
pub use ir::{
    AdaLnModulation, ColumnSlice, DType, Graph, Op, Rope, Segments, SegmentsId, Snake, TensorDesc, TensorId,
    TensorKind, WeightId, scalar_slot,
};
pub use ops::OpKind;
pub use planner::{ARENA_ALIGN, ArenaPlan};
