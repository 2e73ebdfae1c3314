//! Reference attention: for every sequence of a packed batch, every query head
//! and every block of 128 queries, gather Q and K (rotating them with RoPE),
//! `S = Q K^T * scale`, softmax in f32 with the row max subtracted (`softmax`:
//! the reference's, or the bf16 backend's fast one), `O = P V`.
//! Grouped-query: query head j reads kv head `j / (heads / kv_heads)`.

use rayon::prelude::*;

use super::operands::{Operands, wrong_op};
use super::softmax::{Softmax, softmax_rows};
use crate::error::Result;
use crate::graph::{ColumnSlice, Op, Segments};

const QUERY_BLOCK: usize = 128;

/// Columns `offset..offset + heads * head_dim` of a row-major matrix `ld` wide.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    /// The whole row-major matrix.
    pub data: &'a [f32],
    /// Row stride of `data` in elements.
    pub ld: usize,
    /// First column of the heads within a row.
    pub offset: usize,
}

impl Strided<'_> {
    fn row(&self, r: usize, col: usize, len: usize) -> &[f32] {
        let start = r * self.ld + self.offset + col;
        &self.data[start..start + len]
    }
}

/// Head layout, softmax scale and optional RoPE of one attention op.
pub struct AttentionParams<'a> {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; each serves `heads / kv_heads` query heads.
    pub kv_heads: usize,
    /// Width of every head.
    pub head_dim: usize,
    /// Factor applied to `Q K^T` before the softmax (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// `(inv_freq, rotary_dim)`: rotate the first `rotary_dim` dims of q and k heads.
    pub rope: Option<(&'a [f32], usize)>,
    /// The reference softmax, or the bf16 backend's fast one.
    pub softmax: Softmax,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Copies one head vector, applying RoPE for `position` (angles in f64):
/// `v[i] = r[i] cos - r[i+h] sin`, `v[i+h] = r[i+h] cos + r[i] sin`, h = rotary_dim / 2.
pub fn load_head(src: &[f32], position: usize, rope: Option<(&[f32], usize)>, dst: &mut [f32]) {
    match rope {
        Some((inv_freq, rotary_dim)) => {
            let angles = RopeTable::new(inv_freq, rotary_dim, position + 1);
            angles.rotate(src, position, dst);
        }
        None => dst.copy_from_slice(src),
    }
}

/// `(sin, cos)` of `position * inv_freq[i]` in f64 for every position an op
/// needs, computed once per op rather than once per (head, query block): the
/// values, and so the rotated vectors, are exactly those of computing each
/// angle where it is used.
struct RopeTable {
    half: usize,
    sin_cos: Vec<(f64, f64)>,
}

impl RopeTable {
    fn new(inv_freq: &[f32], rotary_dim: usize, positions: usize) -> Self {
        let half = rotary_dim / 2;
        let sin_cos = (0..positions)
            .flat_map(|pos| inv_freq[..half].iter().map(move |&f| (pos as f64 * f as f64).sin_cos()))
            .collect();
        RopeTable { half, sin_cos }
    }

    /// `dst` = `src` with its first `2 * half` dims rotated for `position`.
    fn rotate(&self, src: &[f32], position: usize, dst: &mut [f32]) {
        dst.copy_from_slice(src);
        let angles = &self.sin_cos[position * self.half..(position + 1) * self.half];
        for (i, &(sin, cos)) in angles.iter().enumerate() {
            let (a, b) = (src[i] as f64, src[i + self.half] as f64);
            dst[i] = (a * cos - b * sin) as f32;
            dst[i + self.half] = (b * cos + a * sin) as f32;
        }
    }
}

/// `out` is `[total queries, heads * head_dim]`.
///
/// K is rotated once per (sequence, kv head) and shared by every query head
/// and query block that reads it; V (and K without RoPE) is read in place by
/// the GEMM, whose packing makes the result independent of the stride.
pub fn attention(
    q: Strided,
    k: Strided,
    v: Strided,
    q_seg: &Segments,
    kv_seg: &Segments,
    p: &AttentionParams,
    out: &mut [f32],
) {
    let longest = (0..q_seg.count()).map(|b| q_seg.len_of(b).max(kv_seg.len_of(b))).max().unwrap_or(0);
    let rope = p.rope.map(|(inv_freq, rotary_dim)| RopeTable::new(inv_freq, rotary_dim, longest));
    let rotated_keys = match &rope {
        Some(table) => rotate_keys(k, kv_seg, p, table),
        None => Vec::new(),
    };
    let op = OneAttention { q, k, v, q_seg, kv_seg, p, rope: rope.as_ref(), rotated_keys };
    let mut tasks = Vec::new();
    for b in 0..q_seg.count() {
        for h in 0..p.heads {
            for q0 in (0..q_seg.len_of(b)).step_by(QUERY_BLOCK) {
                tasks.push((b, h, q0));
            }
        }
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks.into_par_iter().for_each(|(b, h, q0)| {
        // Capture the whole Send wrapper, not (edition 2021+) its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let out_ptr = out_ptr;
        // SAFETY: out is [total queries, heads * head_dim] and this task alone
        // writes rows q0.. of sequence b in head h's columns.
        unsafe { op.query_block(b, h, q0, out_ptr.0) };
    });
}

/// Keys rotated by RoPE, `[sequence][kv head] -> [len, head_dim]`.
fn rotate_keys(k: Strided, kv_seg: &Segments, p: &AttentionParams, table: &RopeTable) -> Vec<Vec<f32>> {
    let hd = p.head_dim;
    (0..kv_seg.count() * p.kv_heads)
        .into_par_iter()
        .map(|i| {
            let (b, kvh) = (i / p.kv_heads, i % p.kv_heads);
            let kr = kv_seg.range(b);
            let mut ks = vec![0.0f32; kr.len() * hd];
            for (j, dst) in ks.chunks_exact_mut(hd.max(1)).enumerate() {
                table.rotate(k.row(kr.start + j, kvh * hd, hd), j, dst);
            }
            ks
        })
        .collect()
}

/// The operands of one attention op, shared by its query-block tasks.
struct OneAttention<'a> {
    q: Strided<'a>,
    k: Strided<'a>,
    v: Strided<'a>,
    q_seg: &'a Segments,
    kv_seg: &'a Segments,
    p: &'a AttentionParams<'a>,
    rope: Option<&'a RopeTable>,
    /// `rotate_keys`' output with RoPE, else empty.
    rotated_keys: Vec<Vec<f32>>,
}

impl OneAttention<'_> {
    /// Queries `q0..q0 + QUERY_BLOCK` of sequence `b`, head `h`: rotate them,
    /// `S = Q K^T * scale`, softmax, `O = P V` into `out`.
    ///
    /// # Safety
    /// `out` points at the op's `[total queries, heads * head_dim]` output, and
    /// no other thread writes this block of it.
    unsafe fn query_block(&self, b: usize, h: usize, q0: usize, out: *mut f32) {
        let (q, k, v, p) = (self.q, self.k, self.v, self.p);
        let hd = p.head_dim;
        let (qr, kr) = (self.q_seg.range(b), self.kv_seg.range(b));
        let (nq, nk) = ((qr.len() - q0).min(QUERY_BLOCK), kr.len());
        let kvh = h / (p.heads / p.kv_heads);
        let mut qs = vec![0.0f32; nq * hd];
        for i in 0..nq {
            let src = q.row(qr.start + q0 + i, h * hd, hd);
            let dst = &mut qs[i * hd..(i + 1) * hd];
            match self.rope {
                Some(table) => table.rotate(src, q0 + i, dst),
                None => dst.copy_from_slice(src),
            }
        }
        if nk > 0 {
            // Bounds of the in-place reads below: the last key and value rows
            // (slice indexing panics rather than reading past the arena).
            let _ = (k.row(kr.end - 1, kvh * hd, hd), v.row(kr.end - 1, kvh * hd, hd));
        }
        // K^T as the GEMM's right operand: element (d, j) of key j.
        let (k_ptr, k_row_stride) = match self.rope {
            Some(_) => (self.rotated_keys[b * p.kv_heads + kvh].as_ptr(), hd),
            None if nk > 0 => (k.row(kr.start, kvh * hd, hd).as_ptr(), k.ld),
            None => (qs.as_ptr(), hd), // no keys: the GEMM reads nothing
        };
        let v_ptr = if nk > 0 { v.row(kr.start, kvh * hd, hd).as_ptr() } else { qs.as_ptr() };
        let mut s = vec![0.0f32; nq * nk];
        // SAFETY: k_ptr addresses nk rows of hd values k_row_stride apart (the
        // first and last checked above); qs and s are plain row-major buffers.
        unsafe {
            matrixmultiply::sgemm(
                nq,
                hd,
                nk,
                p.scale,
                qs.as_ptr(),
                hd as isize,
                1,
                k_ptr,
                1,
                k_row_stride as isize,
                0.0,
                s.as_mut_ptr(),
                nk as isize,
                1,
            );
        }
        softmax_rows(p.softmax, &mut s, nk);
        let ld_out = p.heads * hd;
        // SAFETY: v_ptr addresses nk rows of hd values v.ld apart; the caller
        // gives this task rows qr.start+q0.. of head h's columns of out.
        unsafe {
            matrixmultiply::sgemm(
                nq,
                nk,
                hd,
                1.0,
                s.as_ptr(),
                nk as isize,
                1,
                v_ptr,
                v.ld as isize,
                1,
                0.0,
                out.add((qr.start + q0) * ld_out + h * hd),
                ld_out as isize,
                1,
            );
        }
    }
}

impl Operands<'_> {
    /// With the backend's softmax (`CpuBackend::softmax`).
    pub(super) fn attention(&self, op: &Op) -> Result<()> {
        let Op::Attention { q, k, v, q_segments, kv_segments, heads, kv_heads, head_dim, scale, rope, out } = op else {
            return Err(wrong_op(op, "attention"));
        };
        let strided =
            |s: &ColumnSlice| Strided { data: self.input(s.tensor), ld: self.desc(s.tensor).cols, offset: s.offset };
        let params = AttentionParams {
            heads: *heads,
            kv_heads: *kv_heads,
            head_dim: *head_dim,
            scale: *scale,
            rope: match rope {
                Some(r) => Some((self.weight(r.inv_freq)?, r.rotary_dim)),
                None => None,
            },
            softmax: self.backend.softmax(),
        };
        let (q_seg, kv_seg) = (self.seg(*q_segments), self.seg(*kv_segments));
        attention(strided(q), strided(k), strided(v), q_seg, kv_seg, &params, self.output(*out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct softmax(q k^T * scale) v for one head, in f64.
    fn naive(q: &[Vec<f64>], k: &[Vec<f64>], v: &[Vec<f64>], scale: f64) -> Vec<Vec<f64>> {
        q.iter()
            .map(|qi| {
                let s: Vec<f64> =
                    k.iter().map(|kj| qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale).collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                (0..v[0].len()).map(|d| e.iter().zip(v).map(|(p, vj)| p * vj[d]).sum::<f64>() / z).collect()
            })
            .collect()
    }

    #[test]
    fn grouped_query_heads_and_packed_sequences_match_naive() {
        let (heads, kv_heads, hd) = (4, 2, 8);
        let q_seg = Segments::from_lengths([3, 130]);
        let kv_seg = Segments::from_lengths([5, 2]);
        let val = |i: usize| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0;
        let q: Vec<f32> = (0..q_seg.total() * heads * hd).map(val).collect();
        let kv: Vec<f32> = (0..kv_seg.total() * 2 * kv_heads * hd).map(|i| val(i + 17)).collect();
        let mut out = vec![0.0; q_seg.total() * heads * hd];
        let params =
            AttentionParams { heads, kv_heads, head_dim: hd, scale: 0.3, rope: None, softmax: Softmax::Reference };
        let kvw = 2 * kv_heads * hd;
        attention(
            Strided { data: &q, ld: heads * hd, offset: 0 },
            Strided { data: &kv, ld: kvw, offset: 0 },
            Strided { data: &kv, ld: kvw, offset: kv_heads * hd },
            &q_seg,
            &kv_seg,
            &params,
            &mut out,
        );
        for b in 0..2 {
            for h in 0..heads {
                let kvh = h / 2;
                let rows = |data: &[f32], seg: &Segments, ld: usize, off: usize| -> Vec<Vec<f64>> {
                    seg.range(b).map(|r| (0..hd).map(|d| data[r * ld + off + d] as f64).collect()).collect()
                };
                let want = naive(
                    &rows(&q, &q_seg, heads * hd, h * hd),
                    &rows(&kv, &kv_seg, kvw, kvh * hd),
                    &rows(&kv, &kv_seg, kvw, kv_heads * hd + kvh * hd),
                    0.3,
                );
                for (i, r) in q_seg.range(b).enumerate() {
                    for d in 0..hd {
                        let got = out[r * heads * hd + h * hd + d] as f64;
                        assert!((got - want[i][d]).abs() < 1e-5, "b{b} h{h} r{r} d{d}: {got} vs {}", want[i][d]);
                    }
                }
            }
        }
    }

    /// Runs self-attention over packed sequences of `lens` (q, k, v from one
    /// `[rows, 3 * heads * hd]` matrix, RoPE on half of each head, 4 query
    /// heads over 2 kv heads) with `softmax`.
    fn packed_self_attention(lens: &[usize], qkv: &[f32], softmax: Softmax) -> Vec<f32> {
        let (heads, kv_heads, hd) = (4, 2, 16);
        let width = (heads + 2 * kv_heads) * hd;
        let seg = Segments::from_lengths(lens.iter().copied());
        let inv_freq: Vec<f32> = (0..hd / 4).map(|i| 10000f32.powf(-(i as f32) / (hd / 4) as f32)).collect();
        let params =
            AttentionParams { heads, kv_heads, head_dim: hd, scale: 0.25, rope: Some((&inv_freq, hd / 2)), softmax };
        let mut out = vec![0.0; seg.total() * heads * hd];
        attention(
            Strided { data: qkv, ld: width, offset: 0 },
            Strided { data: qkv, ld: width, offset: heads * hd },
            Strided { data: qkv, ld: width, offset: (heads + kv_heads) * hd },
            &seg,
            &seg,
            &params,
            &mut out,
        );
        out
    }

    #[test]
    fn fast_softmax_attention_is_close_to_the_reference_and_the_same_alone_or_packed() {
        let lens = [37, 150, 1];
        let width = 8 * 16;
        let rows: usize = lens.iter().sum();
        // Scores of a few units, as in a trained model's attention.
        let qkv: Vec<f32> = (0..rows * width).map(|i| ((i * 2654435761usize % 1000) as f32 / 250.0) - 2.0).collect();
        let reference = packed_self_attention(&lens, &qkv, Softmax::Reference);
        for isa in crate::backend::cpu::Isa::available() {
            let fast = packed_self_attention(&lens, &qkv, Softmax::Fast(isa));
            // Each output is a convex combination of values |v| <= 2 whose
            // weights (softmax.rs) are within 1e-6 relative of the reference's:
            // |error| <= 1e-6 * sum |p v| <= 2e-6, plus f32 rounding of the GEMM.
            for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
                assert!((f - r).abs() <= 4e-6, "{isa:?} element {i}: {f} vs {r}");
            }
            // The middle sequence alone: the same bits as packed between the others.
            let (start, end) = (lens[0] * width, (lens[0] + lens[1]) * width);
            let alone = packed_self_attention(&lens[1..2], &qkv[start..end], Softmax::Fast(isa));
            let out_width = 4 * 16;
            assert!(
                alone == fast[lens[0] * out_width..(lens[0] + lens[1]) * out_width],
                "{isa:?}: a sequence's attention depends on the sequences packed with it"
            );
        }
    }

    #[test]
    fn rope_rotates_pairs_half_a_rotary_dim_apart() {
        let src: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        let inv_freq = [1.0f32, 0.5];
        let mut dst = vec![0.0; 8];
        load_head(&src, 3, Some((&inv_freq, 4)), &mut dst);
        let (s0, c0) = (3.0f64).sin_cos();
        let (s1, c1) = (1.5f64).sin_cos();
        let want = [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 3.0 * c0 + 1.0 * s0, 4.0 * c1 + 2.0 * s1];
        for i in 0..4 {
            assert!((dst[i] as f64 - want[i]).abs() < 1e-6);
        }
        assert_eq!(&dst[4..], &src[4..]);
        load_head(&src, 0, Some((&inv_freq, 4)), &mut dst);
        assert_eq!(dst, src, "position 0 is the identity");
    }
}
