//! Reference attention: for every sequence of a packed batch, every query head
//! and every block of 128 queries, gather Q and K (rotating them with RoPE),
//! `S = Q K^T * scale`, softmax in f32 with the row max subtracted, `O = P V`.
//! Grouped-query: query head j reads kv head `j / (heads / kv_heads)`.

use rayon::prelude::*;

use crate::graph::Segments;

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
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Copies one head vector, applying RoPE for `position` (angles in f64):
/// `v[i] = r[i] cos - r[i+h] sin`, `v[i+h] = r[i+h] cos + r[i] sin`, h = rotary_dim / 2.
pub fn load_head(src: &[f32], position: usize, rope: Option<(&[f32], usize)>, dst: &mut [f32]) {
    dst.copy_from_slice(src);
    if let Some((inv_freq, rotary_dim)) = rope {
        let half = rotary_dim / 2;
        for i in 0..half {
            let (sin, cos) = (position as f64 * inv_freq[i] as f64).sin_cos();
            let (a, b) = (src[i] as f64, src[i + half] as f64);
            dst[i] = (a * cos - b * sin) as f32;
            dst[i + half] = (b * cos + a * sin) as f32;
        }
    }
}

/// `out` is `[total queries, heads * head_dim]`.
pub fn attention(
    q: Strided,
    k: Strided,
    v: Strided,
    q_seg: &Segments,
    kv_seg: &Segments,
    p: &AttentionParams,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let ld_out = p.heads * hd;
    let group = p.heads / p.kv_heads;
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
        let (qr, kr) = (q_seg.range(b), kv_seg.range(b));
        let (nq, nk) = ((qr.len() - q0).min(QUERY_BLOCK), kr.len());
        let kvh = h / group;
        let mut qs = vec![0.0f32; nq * hd];
        for i in 0..nq {
            load_head(q.row(qr.start + q0 + i, h * hd, hd), q0 + i, p.rope, &mut qs[i * hd..(i + 1) * hd]);
        }
        let mut ks = vec![0.0f32; nk * hd];
        let mut vs = vec![0.0f32; nk * hd];
        for j in 0..nk {
            load_head(k.row(kr.start + j, kvh * hd, hd), j, p.rope, &mut ks[j * hd..(j + 1) * hd]);
            vs[j * hd..(j + 1) * hd].copy_from_slice(v.row(kr.start + j, kvh * hd, hd));
        }
        let mut s = vec![0.0f32; nq * nk];
        // SAFETY: plain row-major buffers of the sizes passed.
        unsafe {
            matrixmultiply::sgemm(
                nq,
                hd,
                nk,
                p.scale,
                qs.as_ptr(),
                hd as isize,
                1,
                ks.as_ptr(),
                1,
                hd as isize,
                0.0,
                s.as_mut_ptr(),
                nk as isize,
                1,
            );
        }
        for row in s.chunks_mut(nk.max(1)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f64;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x as f64;
            }
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        // SAFETY: this task alone writes rows qr.start+q0.. of head h's columns.
        unsafe {
            matrixmultiply::sgemm(
                nq,
                nk,
                hd,
                1.0,
                s.as_ptr(),
                nk as isize,
                1,
                vs.as_ptr(),
                hd as isize,
                1,
                0.0,
                out_ptr.0.add((qr.start + q0) * ld_out + h * hd),
                ld_out as isize,
                1,
            );
        }
    });
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
        let params = AttentionParams { heads, kv_heads, head_dim: hd, scale: 0.3, rope: None };
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
