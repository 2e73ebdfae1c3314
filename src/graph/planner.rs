//! Arena planner: every tensor of a graph gets a fixed slice of one buffer.
//!
//! Inputs, state and outputs are pinned (they live for the whole run, and state
//! across runs). A temporary lives from the op that writes it to the last op
//! that reads it; temporaries whose lifetimes do not overlap share memory.
//! Placement is greedy by size (largest first, lowest offset that does not
//! collide with a placed tensor alive at the same time), the heuristic of
//! TFLite's arena planner: simple and within a few percent of optimal on
//! layer-by-layer graphs like ours.

use super::ir::{Graph, TensorKind};
use crate::error::{Error, Result};

/// Offsets are multiples of this many f32 elements (256 bytes), so that every
/// tensor starts on an address GPU vector loads and cuBLASLt like.
pub const ARENA_ALIGN: usize = 64;

/// Placement of every tensor of a graph in one arena, in f32 elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Element offset of each tensor in the arena.
    pub offsets: Vec<usize>,
    /// Arena size in f32 elements.
    pub size: usize,
    /// `[first op, last op]` during which each tensor must keep its value.
    pub lifetimes: Vec<(usize, usize)>,
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

impl ArenaPlan {
    /// Computes lifetimes and places every tensor; fails if a temporary is read before any op writes it, or never written.
    pub fn plan(graph: &Graph) -> Result<Self> {
        let lifetimes = lifetimes(graph)?;
        let n = graph.tensors.len();
        let mut offsets = vec![0usize; n];
        let mut size = 0usize;

        // Pinned tensors first, one after the other.
        let mut temps = Vec::new();
        for (i, t) in graph.tensors.iter().enumerate() {
            if t.kind == TensorKind::Temp {
                temps.push(i);
            } else {
                offsets[i] = size;
                size += align_up(t.len());
            }
        }
        let pinned_end = size;

        temps.sort_by_key(|&i| (std::cmp::Reverse(graph.tensors[i].len()), i));
        let mut placed: Vec<usize> = Vec::new();
        for &i in &temps {
            let (start, end) = lifetimes[i];
            let len = align_up(graph.tensors[i].len());
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&j| lifetimes[j].0 <= end && start <= lifetimes[j].1)
                .map(|&j| (offsets[j], offsets[j] + align_up(graph.tensors[j].len())))
                .collect();
            busy.sort_unstable();
            let mut candidate = pinned_end;
            for (b_start, b_end) in busy {
                if candidate + len <= b_start {
                    break;
                }
                candidate = candidate.max(b_end);
            }
            offsets[i] = candidate;
            size = size.max(candidate + len);
            placed.push(i);
        }
        Ok(ArenaPlan { offsets, size, lifetimes })
    }

    /// Element range of tensor `i`.
    pub fn range(&self, graph: &Graph, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i] + graph.tensors[i].len()
    }
}

/// `[first, last]` op index during which each tensor is alive.
fn lifetimes(graph: &Graph) -> Result<Vec<(usize, usize)>> {
    let last_op = graph.ops.len().saturating_sub(1);
    let mut life: Vec<Option<(usize, usize)>> = graph
        .tensors
        .iter()
        .map(|t| (t.kind != TensorKind::Temp && t.kind != TensorKind::Output).then_some((0, last_op)))
        .collect();
    for (k, op) in graph.ops.iter().enumerate() {
        for t in op.reads() {
            match &mut life[t.0] {
                Some((_, end)) => *end = (*end).max(k),
                None => {
                    return Err(Error::InvalidInput(format!(
                        "graph bug: op {k} ({}) reads `{}` before anything writes it",
                        op.name(),
                        graph.tensors[t.0].name
                    )));
                }
            }
        }
        for t in op.writes() {
            if life[t.0].is_none() {
                life[t.0] = Some((k, k));
            }
        }
    }
    graph
        .tensors
        .iter()
        .zip(life)
        .map(|(t, l)| match (t.kind, l) {
            (TensorKind::Output, Some((start, _))) => Ok((start, last_op)),
            (_, Some(l)) => Ok(l),
            (_, None) => Err(Error::InvalidInput(format!("graph bug: nothing writes `{}`", t.name))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Op, TensorId};

    /// A chain of silu ops with random sizes plus random long-range reads.
    fn random_graph(seed: u64) -> Graph {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut rand = move |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        let mut g = Graph::new();
        let mut ids: Vec<TensorId> = vec![g.input("in", 1 + rand(50), 7)];
        for k in 0..40 {
            let rows = 1 + rand(100);
            let out = g.temp(format!("t{k}"), rows, 7);
            let x = ids[ids.len() - 1 - rand(ids.len().min(6))];
            let residual = ids[rand(ids.len())];
            // Linear with a residual lets an op read two tensors of different ages.
            g.push(Op::Linear { x, w: crate::graph::WeightId(0), bias: None, residual: Some(residual), out });
            ids.push(out);
        }
        g.mark_output(*ids.last().unwrap());
        g
    }

    #[test]
    fn tensors_alive_at_the_same_time_never_share_memory() {
        for seed in 0..50 {
            let g = random_graph(seed);
            let plan = ArenaPlan::plan(&g).unwrap();
            for i in 0..g.tensors.len() {
                assert_eq!(plan.offsets[i] % ARENA_ALIGN, 0);
                assert!(plan.range(&g, i).end <= plan.size);
                for j in 0..i {
                    let (a, b) = (plan.lifetimes[i], plan.lifetimes[j]);
                    let time_overlap = a.0 <= b.1 && b.0 <= a.1;
                    let (ri, rj) = (plan.range(&g, i), plan.range(&g, j));
                    let mem_overlap = ri.start < rj.end && rj.start < ri.end;
                    assert!(!(time_overlap && mem_overlap), "seed {seed}: tensors {i} and {j} collide");
                }
            }
        }
    }

    #[test]
    fn memory_is_reused() {
        let g = random_graph(7);
        let plan = ArenaPlan::plan(&g).unwrap();
        let total: usize = g.tensors.iter().map(|t| align_up(t.len())).sum();
        assert!(plan.size < total / 2, "arena {} vs sum of tensors {total}", plan.size);
    }

    #[test]
    fn reading_an_unwritten_tensor_is_a_graph_bug() {
        let mut g = Graph::new();
        let a = g.temp("never_written", 2, 2);
        let b = g.temp("b", 2, 2);
        g.push(Op::Silu { x: a, out: b });
        let err = ArenaPlan::plan(&g).unwrap_err().to_string();
        assert!(err.contains("never_written"), "{err}");
    }
}
