//! Runs a planned graph on a backend. The arena is allocated once when the
//! executor is made; `run` only launches ops, so a sampler can run the same
//! step graph 150 times without allocating.

use super::ir::{Graph, TensorId, TensorKind};
use super::planner::ArenaPlan;
use crate::backend::{Backend, OpContext};
use crate::error::{Error, Result};

pub struct Executor<'w, B: Backend> {
    backend: &'w B,
    weights: &'w [B::Weight],
    graph: Graph,
    plan: ArenaPlan,
    arena: B::Buffer,
}

impl<'w, B: Backend> Executor<'w, B> {
    pub fn new(backend: &'w B, weights: &'w [B::Weight], graph: Graph) -> Result<Self> {
        let plan = ArenaPlan::plan(&graph)?;
        let arena = backend.alloc(plan.size)?;
        Ok(Executor { backend, weights, graph, plan, arena })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }

    /// Bytes of device memory held by the arena.
    pub fn arena_bytes(&self) -> usize {
        self.plan.size * std::mem::size_of::<f32>()
    }

    /// Sets an input or state tensor; `data` must have exactly its element count.
    pub fn write(&mut self, t: TensorId, data: &[f32]) -> Result<()> {
        let desc = self.graph.desc(t);
        if !matches!(desc.kind, TensorKind::Input | TensorKind::State) {
            return Err(Error::InvalidInput(format!("`{}` is not an input or state tensor", desc.name)));
        }
        if data.len() != desc.len() {
            return Err(Error::InvalidInput(format!(
                "`{}` holds {} x {} = {} values, got {}",
                desc.name,
                desc.rows,
                desc.cols,
                desc.len(),
                data.len()
            )));
        }
        self.backend.write(&mut self.arena, self.plan.offsets[t.0], data)
    }

    /// Reads a tensor that outlives the run (input, state or output).
    pub fn read(&self, t: TensorId) -> Result<Vec<f32>> {
        let desc = self.graph.desc(t);
        if desc.kind == TensorKind::Temp {
            return Err(Error::InvalidInput(format!(
                "`{}` is a temporary; mark it as an output to read it",
                desc.name
            )));
        }
        let mut out = vec![0.0; desc.len()];
        self.backend.read(&self.arena, self.plan.offsets[t.0], &mut out)?;
        Ok(out)
    }

    pub fn run(&mut self) -> Result<()> {
        let mut ctx = OpContext { graph: &self.graph, plan: &self.plan, arena: &mut self.arena, weights: self.weights };
        for op in &self.graph.ops {
            self.backend.run_op(op, &mut ctx)?;
        }
        Ok(())
    }
}
