//! One op's view of the CPU backend, the graph, the weights and the arena,
//! written once for every op: `run_op` makes one and hands the op to its
//! topic module (`elementwise`, `norm`, `linear`, `attention`, `sampler_ops`,
//! `conv`, `vision_ops`), where a method reads the op's operands and calls the
//! op's function over slices. Shapes are the graph's business (`Graph::check`
//! ran when the executor was made).
//!
//! All tensors of a graph live in one `Vec<f32>`; an op needs several of them
//! at once, some read and some written. The planner guarantees that tensors
//! alive at the same time do not overlap; this type checks it again for each
//! op (cheap: a handful of range comparisons) before handing out slices, so
//! that a planner bug is an error and never aliasing `&mut`.

use std::marker::PhantomData;
use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::{CpuBackend, CpuWeight};
use crate::backend::OpContext;
use crate::error::{Error, Result};
use crate::graph::{DType, Graph, Op, Segments, SegmentsId, TensorDesc, TensorId, WeightId};

pub(super) struct Operands<'a> {
    pub(super) backend: CpuBackend,
    pub(super) graph: &'a Graph,
    pub(super) weights: &'a [CpuWeight],
    base: *mut f32,
    ranges: Vec<Range<usize>>,
    written: Vec<TensorId>,
    _arena: PhantomData<&'a mut [f32]>,
}

impl<'a> Operands<'a> {
    pub(super) fn new(backend: CpuBackend, ctx: &'a mut OpContext<'_, CpuBackend>, op: &Op) -> Result<Self> {
        let (graph, plan, weights) = (ctx.graph, ctx.plan, ctx.weights);
        let arena: &'a mut [f32] = ctx.arena;
        let ranges: Vec<Range<usize>> = (0..graph.tensors.len()).map(|i| plan.range(graph, i)).collect();
        if let Some(r) = ranges.iter().find(|r| r.end > arena.len()) {
            return Err(Error::InvalidInput(format!("arena too small for range {r:?}")));
        }
        let written = op.writes();
        let reads = op.reads();
        let overlap = |a: &Range<usize>, b: &Range<usize>| a.start < b.end && b.start < a.end;
        for (i, w) in written.iter().enumerate() {
            let others = written[..i].iter().chain(reads.iter().filter(|r| !written.contains(r)));
            if let Some(o) = others.into_iter().find(|o| *o != w && overlap(&ranges[w.0], &ranges[o.0])) {
                return Err(Error::InvalidInput(format!(
                    "arena bug: op {} writes `{}` over `{}`",
                    op.name(),
                    graph.tensors[w.0].name,
                    graph.tensors[o.0].name
                )));
            }
        }
        Ok(Operands { backend, graph, weights, base: arena.as_mut_ptr(), ranges, written, _arena: PhantomData })
    }

    /// A tensor the op reads. Never ask for a tensor that is also taken with `output`.
    pub(super) fn input(&self, t: TensorId) -> &'a [f32] {
        let r = self.ranges[t.0].clone();
        // SAFETY: `r` lies inside the arena (checked in `new`), and no writable
        // slice overlaps it: written tensors were checked disjoint from read ones.
        unsafe { std::slice::from_raw_parts(self.base.add(r.start), r.len()) }
    }

    /// A tensor the op writes (each at most once per op).
    #[allow(clippy::mut_from_ref)]
    pub(super) fn output(&self, t: TensorId) -> &'a mut [f32] {
        assert!(self.written.contains(&t), "op asked to write a tensor it does not declare");
        let r = self.ranges[t.0].clone();
        // SAFETY: inside the arena, and disjoint from every other operand of this op (checked in `new`).
        unsafe { std::slice::from_raw_parts_mut(self.base.add(r.start), r.len()) }
    }

    /// Rounds the values of every fp16 tensor the op wrote to fp16 (round to
    /// nearest even, as a GPU kernel's store does): what such a tensor holds
    /// on the CPU is then exactly what it holds on a device that stores fp16
    /// (`DType`). Called once the op has run.
    pub(super) fn round_fp16_outputs(&self) {
        for &t in &self.written {
            if self.desc(t).dtype == DType::F16 {
                self.output(t).par_chunks_mut(1 << 14).for_each(|chunk| {
                    chunk.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
                });
            }
        }
    }

    pub(super) fn desc(&self, t: TensorId) -> &'a TensorDesc {
        self.graph.desc(t)
    }

    pub(super) fn seg(&self, s: SegmentsId) -> &'a Segments {
        self.graph.seg(s)
    }

    /// A weight's f32 values.
    pub(super) fn weight(&self, id: WeightId) -> Result<&'a [f32]> {
        self.weights[id.0].f32_values()
    }
}

/// The error of an op method given another op (a dispatch bug).
pub(super) fn wrong_op(op: &Op, method: &str) -> Error {
    Error::InvalidInput(format!("the CPU {method} was given a {} op", op.name()))
}
