//! Safe access to the operands of one op inside the CPU arena.
//!
//! All tensors of a graph live in one `Vec<f32>`; an op needs several of them
//! at once, some read and some written. The planner guarantees that tensors
//! alive at the same time do not overlap; this type checks it again for each
//! op (cheap: a handful of range comparisons) before handing out slices, so
//! that a planner bug is an error and never aliasing `&mut`.

use std::marker::PhantomData;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::graph::{ArenaPlan, Graph, Op, TensorId};

pub struct Operands<'a> {
    base: *mut f32,
    ranges: Vec<Range<usize>>,
    written: Vec<TensorId>,
    _arena: PhantomData<&'a mut [f32]>,
}

impl<'a> Operands<'a> {
    pub fn new(arena: &'a mut [f32], graph: &Graph, plan: &ArenaPlan, op: &Op) -> Result<Self> {
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
        Ok(Operands { base: arena.as_mut_ptr(), ranges, written, _arena: PhantomData })
    }

    /// A tensor the op reads. Never ask for a tensor that is also taken with `output`.
    pub fn input(&self, t: TensorId) -> &'a [f32] {
        let r = self.ranges[t.0].clone();
        // SAFETY: `r` lies inside the arena (checked in `new`), and no writable
        // slice overlaps it: written tensors were checked disjoint from read ones.
        unsafe { std::slice::from_raw_parts(self.base.add(r.start), r.len()) }
    }

    /// A tensor the op writes (each at most once per op).
    #[allow(clippy::mut_from_ref)]
    pub fn output(&self, t: TensorId) -> &'a mut [f32] {
        assert!(self.written.contains(&t), "op asked to write a tensor it does not declare");
        let r = self.ranges[t.0].clone();
        // SAFETY: inside the arena, and disjoint from every other operand of this op (checked in `new`).
        unsafe { std::slice::from_raw_parts_mut(self.base.add(r.start), r.len()) }
    }
}
