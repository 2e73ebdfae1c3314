//! `Op::Attention` on CUDA. Two kernels, one semantics (the CPU twin
//! `backend::cpu::attention`):
//! - `flash_attention_hd64` (kernels/flash_attention.cu): the fused tensor-core
//!   kernel (fp16 operands, f32 accumulation and softmax) for head_dim 64, which
//!   is every attention of the models (DiT self- and cross-attention, CLIP),
//!   on f32 tensors or (`flash_attention_hd64_f16`) fp16 ones, the DiT's block
//!   activations; fp16 tensors have no fallback;
//! - `attention_f32` (kernels/attention.cu): the f32 CUDA-core fallback for any
//!   other head_dim up to 128 (op tests use some), for a RoPE whose rotary_dim
//!   is over 32 or not a multiple of 8, and for operands not aligned for float4 loads
//!   (the arena aligns every tensor, so only odd column offsets or widths).

use cudarc::driver::LaunchConfig;
use cudarc::driver::sys::CUdeviceptr;

use super::kernels::{self as k, Ptr};
use super::launch::{Launcher, wrong_op};
use crate::error::{Error, Result};
use cudarc::driver::DevicePtr;

use super::{capture, driver_err};
use crate::graph::{ColumnSlice, DType, Op, Rope, Segments, TensorId};

/// kernels/flash_attention.cu: head_dim, queries per block, threads per block.
pub const FLASH_HEAD_DIM: usize = 64;
const FLASH_BLOCK_M: usize = 64;
const FLASH_THREADS: u32 = 128;
/// kernels/flash_attention.cu: its table of RoPE angles holds 16 frequencies.
const FLASH_MAX_ROTARY_DIM: usize = 32;
/// kernels/attention.cu: queries per block, keys per shared-memory tile, largest head_dim.
const F32_QUERIES_PER_BLOCK: usize = 16;
const F32_KEYS_PER_TILE: usize = 32;
/// Largest head dimension the f32 fallback kernel handles.
pub const F32_MAX_HEAD_DIM: usize = 128;
/// The largest grid.y of a launch (heads go there).
const MAX_GRID_Y: usize = 65535;

/// Which kernel an attention with these parameters runs on (for logs, benches and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `flash_attention_hd64`: tensor cores, fp16 operands, head_dim 64.
    Flash,
    /// The f32 fallback kernel, for other head dims.
    F32,
}

/// The kernel choice from the shape alone; `flash_operands_aligned` adds the
/// pointer and stride conditions at launch.
pub fn attention_kernel(head_dim: usize, rotary_dim: Option<usize>) -> AttentionKernel {
    if head_dim == FLASH_HEAD_DIM && rotary_dim.is_none_or(|r| r.is_multiple_of(8) && r <= FLASH_MAX_ROTARY_DIM) {
        AttentionKernel::Flash
    } else {
        AttentionKernel::F32
    }
}

/// `ceil(len / 64)` query tiles per sequence, cumulative: block x of the flash
/// kernel belongs to the sequence b with `starts[b] <= x < starts[b + 1]`.
/// Uploaded by `prepare` with the graph's other tables, so a run uploads nothing.
pub(super) fn tile_starts(seg: &Segments) -> Vec<u32> {
    let mut starts = vec![0u32];
    let mut total = 0usize;
    for len in seg.lengths() {
        total += len.div_ceil(FLASH_BLOCK_M);
        // A grid has at most 2^31 - 1 blocks in x; the launch refuses more (checked there).
        starts.push(total.min(u32::MAX as usize) as u32);
    }
    starts
}

/// The flash kernel reads q, k, v 16 bytes at a time (a float4, or 8 halves
/// by `cp.async`) and writes 2 elements at a time; `elem` is the element size
/// in bytes.
fn flash_operands_aligned(elem: u64, pointers: &[CUdeviceptr], lds: &[usize], out: CUdeviceptr, out_ld: usize) -> bool {
    let per_16_bytes = 16 / elem as usize;
    pointers.iter().all(|p| p.is_multiple_of(16))
        && lds.iter().all(|ld| ld.is_multiple_of(per_16_bytes))
        && out.is_multiple_of(2 * elem)
        && out_ld.is_multiple_of(2)
}

/// Rows of the flash kernel's RoPE table an attention needs: one per position
/// of its longest query or key sequence.
fn rope_positions(q: &Segments, kv: &Segments) -> usize {
    q.lengths().chain(kv.lengths()).max().unwrap_or(0)
}

/// The flash kernel's RoPE angles: for each position p < `positions`, 16
/// (cos, sin) pairs of `p * inv_freq[f]` (f < rotary_dim / 2; zeros after),
/// in f64 rounded to f32, exactly the angles the CPU twin rotates with
/// (`backend::cpu::attention`). Made once per graph (`prepare`): the kernel
/// reads it instead of evaluating sines per tile.
pub(super) fn rope_table(inv_freq: &[f32], rotary_dim: usize, positions: usize) -> Vec<f32> {
    let freqs = &inv_freq[..rotary_dim / 2];
    let mut table = Vec::with_capacity(positions * FLASH_MAX_ROTARY_DIM);
    for p in 0..positions {
        let row = table.len();
        for &f in freqs {
            let (sin, cos) = (p as f64 * f as f64).sin_cos();
            table.extend([cos as f32, sin as f32]);
        }
        // A row is 16 pairs whatever rotary_dim is (the kernel's row stride).
        table.resize(row + FLASH_MAX_ROTARY_DIM, 0.0);
    }
    table
}

impl Launcher<'_> {
    /// Makes the RoPE table of a flash attention with RoPE (`rope_table`), so
    /// that its runs, captured ones included, only look it up.
    pub(super) fn prepare_rope_table(&mut self, op: &Op) -> Result<()> {
        let Op::Attention { q_segments, kv_segments, head_dim, rope: Some(rope), .. } = op else { return Ok(()) };
        if attention_kernel(*head_dim, Some(rope.rotary_dim)) != AttentionKernel::Flash {
            return Ok(());
        }
        let positions = rope_positions(self.graph.seg(*q_segments), self.graph.seg(*kv_segments));
        self.rope_table(rope, positions).map(|_| ())
    }

    /// The device copy of `rope`'s angle table for `positions` positions,
    /// made on first use (`prepare` makes every one a graph needs; never
    /// inside a capture).
    fn rope_table(&mut self, rope: &Rope, positions: usize) -> Result<Ptr> {
        let b = self.backend;
        let key = (rope.inv_freq.0, rope.rotary_dim, positions);
        if !self.arena.rope_tables.contains_key(&key) {
            if capture::is_capturing(&b.stream)? {
                return Err(Error::Cuda("an attention needs a RoPE table that `prepare` did not make".into()));
            }
            let inv_freq = b.weight_to_host(self.weight(rope.inv_freq)?)?.f32.ok_or_else(|| {
                Error::InvalidInput(format!("RoPE inv_freq (weight {}) has no f32 copy", rope.inv_freq.0))
            })?;
            if inv_freq.len() < rope.rotary_dim / 2 {
                return Err(Error::InvalidInput(format!(
                    "RoPE inv_freq has {} values, rotary_dim {} needs {}",
                    inv_freq.len(),
                    rope.rotary_dim,
                    rope.rotary_dim / 2
                )));
            }
            let table = rope_table(&inv_freq, rope.rotary_dim, positions.max(1));
            let dev = b.stream.clone_htod(&table).map_err(driver_err("uploading a RoPE table"))?;
            b.count_allocation();
            self.arena.rope_tables.insert(key, dev);
        }
        let table = &self.arena.rope_tables[&key];
        Ok(Ptr(table.device_ptr(&b.stream).0))
    }

    /// Launches one `Op::Attention` (see the module doc for the kernel choice).
    pub(super) fn attention(&mut self, op: &Op) -> Result<()> {
        let Op::Attention { q, k, v, q_segments, kv_segments, heads, kv_heads, head_dim, scale, rope, out } = op else {
            return Err(wrong_op(op, "attention"));
        };
        let (qs, hd, heads, kv_heads) = (self.graph.seg(*q_segments), *head_dim, *heads, *kv_heads);
        let name = &self.desc(*out).name;
        if hd > F32_MAX_HEAD_DIM {
            return Err(Error::InvalidInput(format!(
                "attention `{name}`: head_dim {hd} is not supported on CUDA (1..={F32_MAX_HEAD_DIM})"
            )));
        }
        if heads > MAX_GRID_Y {
            return Err(Error::Limit(format!("attention `{name}`: {heads} heads exceed a grid of {MAX_GRID_Y}")));
        }
        let (inv_freq, rotary_dim) = match rope {
            Some(r) => (self.weight_f32(r.inv_freq, "RoPE inv_freq")?, r.rotary_dim),
            None => (Ptr::NULL, 0),
        };
        let positions = rope_positions(self.graph.seg(*q_segments), self.graph.seg(*kv_segments));
        let max_q = qs.lengths().max().unwrap_or(0);
        if max_q == 0 || qs.count() == 0 || heads == 0 {
            return Ok(());
        }
        // One element type for all four operands: f32, or fp16 (flash kernel only).
        let dtype = self.dtype(q.tensor);
        if let Some(t) = [k.tensor, v.tensor, *out].into_iter().find(|&t| self.dtype(t) != dtype) {
            return Err(self.unsupported_dtype(op, t));
        }
        let (q_offsets, kv_offsets) = (self.offsets(*q_segments)?, self.offsets(*kv_segments)?);
        let col_ptr = |s: &ColumnSlice| self.column_ptr(s.tensor, s.offset);
        let (qp, kp, vp, op_) = (col_ptr(q), col_ptr(k), col_ptr(v), self.ptr(*out));
        let cols = |t: TensorId| self.desc(t).cols;
        let (q_ld, k_ld, v_ld, out_ld) = (cols(q.tensor), cols(k.tensor), cols(v.tensor), cols(*out));
        let lds = [q_ld, k_ld, v_ld, out_ld];
        if lds.iter().any(|&ld| ld > i32::MAX as usize) {
            return Err(Error::Limit(format!("attention `{name}`: a row of more than 2^31 values")));
        }
        let elem = dtype.bytes() as u64;
        let flash = attention_kernel(hd, rope.map(|r| r.rotary_dim)) == AttentionKernel::Flash
            && flash_operands_aligned(elem, &[qp.0, kp.0, vp.0], &[q_ld, k_ld, v_ld], op_.0, out_ld);
        if dtype == DType::F16 && !flash {
            return Err(Error::InvalidInput(format!(
                "attention `{name}`: fp16 operands need the flash kernel (head_dim {FLASH_HEAD_DIM}, rotary_dim a \
                 multiple of 8 up to {FLASH_MAX_ROTARY_DIM}, rows aligned for 16-byte copies)"
            )));
        }
        if flash {
            let starts = tile_starts(qs);
            let total_tiles = starts.last().copied().unwrap_or(0) as usize;
            if total_tiles > i32::MAX as usize {
                return Err(Error::Limit(format!("attention `{name}`: {total_tiles} query tiles exceed a grid")));
            }
            let cfg = LaunchConfig {
                grid_dim: (total_tiles as u32, heads as u32, 1),
                block_dim: (FLASH_THREADS, 1, 1),
                shared_mem_bytes: 0, // static: 35,840 bytes
            };
            let (q, k, v, out) = (qp, kp, vp, op_);
            let (q_ld, k_ld, v_ld, out_ld) = (q_ld as i32, k_ld as i32, v_ld as i32, out_ld as i32);
            let (tile_starts, count, heads, kv_heads) =
                (self.table(starts)?, qs.count() as i32, heads as i32, kv_heads as i32);
            let (scale, rotary_dim) = (*scale, rotary_dim as i32);
            let rope_table = match rope {
                Some(r) => self.rope_table(r, positions)?,
                None => Ptr::NULL,
            };
            // One kernel body, two entry points with the same parameters.
            return match dtype {
                DType::F32 => self.launch(
                    cfg,
                    k::FlashAttentionHd64 {
                        q,
                        q_ld,
                        k,
                        k_ld,
                        v,
                        v_ld,
                        q_offsets,
                        kv_offsets,
                        tile_starts,
                        count,
                        heads,
                        kv_heads,
                        scale,
                        rope_table,
                        rotary_dim,
                        out,
                        out_ld,
                    },
                ),
                DType::F16 => self.launch(
                    cfg,
                    k::FlashAttentionHd64F16 {
                        q,
                        q_ld,
                        k,
                        k_ld,
                        v,
                        v_ld,
                        q_offsets,
                        kv_offsets,
                        tile_starts,
                        count,
                        heads,
                        kv_heads,
                        scale,
                        rope_table,
                        rotary_dim,
                        out,
                        out_ld,
                    },
                ),
            };
        }
        if qs.count() > MAX_GRID_Y {
            return Err(Error::Limit(format!(
                "attention `{name}`: {} sequences exceed a grid of {MAX_GRID_Y} (f32 kernel, head_dim {hd})",
                qs.count()
            )));
        }
        let smem_floats = F32_KEYS_PER_TILE * (hd + 1) + F32_KEYS_PER_TILE * hd + F32_QUERIES_PER_BLOCK * hd + 4 * 32;
        let cfg = LaunchConfig {
            grid_dim: (max_q.div_ceil(F32_QUERIES_PER_BLOCK) as u32, heads as u32, qs.count() as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (smem_floats * std::mem::size_of::<f32>()) as u32,
        };
        let kernel = k::AttentionF32 {
            q: qp,
            q_ld: q_ld as i32,
            k: kp,
            k_ld: k_ld as i32,
            v: vp,
            v_ld: v_ld as i32,
            q_offsets,
            kv_offsets,
            heads: heads as i32,
            kv_heads: kv_heads as i32,
            head_dim: hd as i32,
            scale: *scale,
            inv_freq,
            rotary_dim: rotary_dim as i32,
            out: op_,
            out_ld: out_ld as i32,
        };
        self.launch(cfg, kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_models_attentions_take_the_flash_kernel() {
        // DiT self-attention (RoPE on 32 dims), DiT cross-attention and CLIP (no RoPE).
        assert_eq!(attention_kernel(64, Some(32)), AttentionKernel::Flash);
        assert_eq!(attention_kernel(64, None), AttentionKernel::Flash);
        assert_eq!(attention_kernel(64, Some(16)), AttentionKernel::Flash);
        // The f32 fallback: other head dims, a rotary_dim whose halves are not whole float4s.
        assert_eq!(attention_kernel(33, None), AttentionKernel::F32);
        assert_eq!(attention_kernel(128, Some(128)), AttentionKernel::F32);
        assert_eq!(attention_kernel(64, Some(20)), AttentionKernel::F32);
        assert_eq!(attention_kernel(64, Some(64)), AttentionKernel::F32, "more angles than the kernel's table");
    }

    #[test]
    fn rope_tables_hold_16_cos_sin_pairs_per_position() {
        let inv_freq = [1.0f32, 0.5, 0.25, 0.125];
        let table = rope_table(&inv_freq, 8, 3);
        assert_eq!(table.len(), 3 * 32);
        // Position 2, frequency 1: the angle 2 * 0.5 = 1.
        assert_eq!((table[2 * 32 + 2], table[2 * 32 + 3]), (1f64.cos() as f32, 1f64.sin() as f32));
        // Position 0 does not rotate; pairs past rotary_dim / 2 are zeros.
        assert_eq!(&table[0..2], &[1.0, 0.0]);
        assert!(table[2 * 32 + 8..3 * 32].iter().all(|&v| v == 0.0));
        assert_eq!(rope_positions(&Segments::from_lengths([5, 9]), &Segments::from_lengths([7, 2])), 9);
    }

    #[test]
    fn query_tiles_map_blocks_to_sequences() {
        let seg = Segments::from_lengths([1, 64, 65, 0, 3000]);
        assert_eq!(tile_starts(&seg), vec![0, 1, 2, 4, 4, 4 + 47]);
    }

    #[test]
    fn misaligned_operands_fall_back() {
        assert!(flash_operands_aligned(4, &[0, 256, 4096], &[4608, 64], 512, 1536));
        assert!(!flash_operands_aligned(4, &[4], &[64], 0, 64), "a pointer 4 bytes off a float4");
        assert!(!flash_operands_aligned(4, &[0], &[66], 0, 64), "rows of 66 floats misalign every other row");
        assert!(!flash_operands_aligned(4, &[0], &[64], 4, 64), "output not float2-aligned");
        // fp16: 16-byte cp.async copies of 8 halves, 4-byte stores.
        assert!(flash_operands_aligned(2, &[16, 3088], &[4608, 64], 4, 1536));
        assert!(!flash_operands_aligned(2, &[8], &[64], 0, 64), "a pointer 8 bytes off a 16-byte copy");
        assert!(!flash_operands_aligned(2, &[0], &[68], 0, 64), "rows of 68 halves misalign every other row");
        assert!(!flash_operands_aligned(2, &[0], &[64], 2, 64), "output not fp16x2-aligned");
    }
}
