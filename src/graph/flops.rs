//! Floating-point operations of a graph, to turn a measured time into achieved
//! TFLOP/s. Only the matrix products count (a multiply-add is 2 FLOP): linear
//! layers, attention and the VAE's convolutions as the GEMMs they are.
//! Elementwise ops, norms, softmax and RoPE are ignored: they are memory-bound
//! and a rounding error next to the GEMMs (well under 1% of a DiT step).

use super::ir::{Graph, Op};

impl Graph {
    /// Matrix-product FLOP of one run of the graph (see the module comment).
    pub fn flops(&self) -> u64 {
        self.ops.iter().map(|op| self.op_flops(op)).sum()
    }

    /// Matrix-product FLOP of one op of this graph (0 for the elementwise ones).
    pub fn op_flops(&self, op: &Op) -> u64 {
        let rows = |t| self.desc(t).rows as u64;
        let cols = |t| self.desc(t).cols as u64;
        match op {
            // [M, K] x [K, N].
            Op::Linear { x, out, .. } => 2 * rows(*x) * cols(*x) * cols(*out),
            // Per sequence and head: scores q k^T (Mq x Mk x d) and p v (Mq x d x Mk).
            Op::Attention { q_segments, kv_segments, heads, head_dim, .. } => {
                let (q, kv) = (self.seg(*q_segments), self.seg(*kv_segments));
                (0..q.count().min(kv.count()))
                    .map(|b| 4 * q.len_of(b) as u64 * kv.len_of(b) as u64 * (*heads * *head_dim) as u64)
                    .sum()
            }
            // Per output row: C_out x (kernel * C_in) multiply-adds.
            Op::Conv1d { x, kernel, out, .. } => 2 * rows(*out) * cols(*out) * *kernel as u64 * cols(*x),
            // Kernel 2 * stride with stride `stride`: every output row reads two input rows.
            Op::ConvTranspose1d { x, out, .. } => 2 * rows(*out) * cols(*out) * 2 * cols(*x),
            Op::LayerNorm { .. }
            | Op::GatedResidual { .. }
            | Op::Silu { .. }
            | Op::SwiGlu { .. }
            | Op::TimestepFeatures { .. }
            | Op::AddPositional { .. }
            | Op::PrependRow { .. }
            | Op::DropFirstRow { .. }
            | Op::CfgExpand { .. }
            | Op::CfgDenoise { .. }
            | Op::Dpmpp3mUpdate { .. }
            | Op::SelectStepRow { .. }
            | Op::SnakeBeta { .. }
            | Op::Patchify { .. }
            | Op::PrependWeightRow { .. }
            | Op::QuickGelu { .. }
            | Op::FirstRows { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ColumnSlice, Segments, WeightId};

    /// Two sequences of 3 and 5 tokens, width 8 (2 heads of 4), attending to
    /// contexts of 2 and 4 tokens; a linear layer, an attention, a conv, a
    /// transposed conv and two elementwise ops. Every count is done by hand.
    #[test]
    fn flops_count_gemms_by_hand() {
        let mut g = Graph::new();
        let tokens = g.add_segments(Segments::from_lengths([3, 5]));
        let context = g.add_segments(Segments::from_lengths([2, 4]));
        let x = g.input("x", 8, 8);
        let ctx = g.input("context", 6, 8);
        let qkv = g.temp("qkv", 8, 24);
        // 2 * 8 rows * 8 in * 24 out = 3072.
        g.push(Op::Linear { x, w: WeightId(0), bias: Some(WeightId(1)), residual: Some(x), out: qkv });
        let act = g.temp("act", 8, 24);
        g.push(Op::Silu { x: qkv, out: act });
        let attn = g.temp("attn", 8, 8);
        // 4 * (3*2 + 5*4) query-key pairs * 2 heads * 4 dims = 4 * 26 * 8 = 832.
        g.push(Op::Attention {
            q: ColumnSlice { tensor: act, offset: 0, width: 8 },
            k: ColumnSlice { tensor: ctx, offset: 0, width: 8 },
            v: ColumnSlice { tensor: ctx, offset: 0, width: 8 },
            q_segments: tokens,
            kv_segments: context,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            scale: 0.5,
            rope: None,
            out: attn,
        });
        let conv = g.temp("conv", 8, 3);
        // 2 * 8 rows * 3 out * (7 taps * 8 in) = 2688.
        g.push(Op::Conv1d {
            x: attn,
            w: WeightId(2),
            bias: None,
            kernel: 7,
            dilation: 3,
            padding: 9,
            residual: None,
            input_snake: None,
            segments: tokens,
            out: conv,
        });
        let up_seg = g.add_segments(Segments::from_lengths([6, 10]));
        let up = g.temp("up", 16, 5);
        // 2 * 16 rows * 5 out * (2 taps * 3 in) = 960.
        g.push(Op::ConvTranspose1d {
            x: conv,
            w: WeightId(3),
            bias: None,
            stride: 2,
            input_snake: None,
            in_segments: tokens,
            out_segments: up_seg,
            out: up,
        });
        let snake = g.temp("snake", 16, 5);
        g.push(Op::SnakeBeta { x: up, alpha: WeightId(4), beta: WeightId(5), out: snake });

        let per_op: Vec<u64> = g.ops.iter().map(|op| g.op_flops(op)).collect();
        assert_eq!(per_op, vec![3072, 0, 832, 2688, 960, 0]);
        assert_eq!(g.flops(), 3072 + 832 + 2688 + 960);
    }
}
