//! Ops of the CLIP image tower (lova-model.md section 3) that the DiT does not
//! need: patch extraction for the patch-embedding conv, the class-token
//! prepend, QuickGELU, and the gather of each image's class token.
//!
//! Layouts: tensors are row-major `[rows, cols]`; an image is one row of
//! `channels * size * size` values in CHW order; a packed batch of token
//! sequences is described by `Segments` as everywhere else.

use rayon::prelude::*;

use super::operands::{Operands, wrong_op};
use crate::error::Result;
use crate::graph::{Op, Segments, TensorId};

/// im2col for a conv with stride = kernel = `patch` and no padding.
///
/// `images` is `[n, channels * size * size]`; `out` is `[n * grid^2, channels * patch^2]`
/// with `grid = size / patch`. Row `(i * grid + py) * grid + px` holds the patch
/// at grid position (py, px) of image i, its columns in (channel, ky, kx) order,
/// which is the flattening of a PyTorch conv weight `[out, channels, patch, patch]`:
/// the conv is then `out @ w^T`. Pixels past `grid * patch` (when `size` is not
/// a multiple of `patch`) are dropped, as the conv does.
pub fn patchify(images: &[f32], channels: usize, size: usize, patch: usize, out: &mut [f32]) {
    let grid = size / patch;
    let row_len = channels * patch * patch;
    let image_len = channels * size * size;
    if row_len == 0 {
        return;
    }
    out.par_chunks_mut(row_len).enumerate().for_each(|(r, o)| {
        let (i, cell) = (r / (grid * grid), r % (grid * grid));
        let (py, px) = (cell / grid, cell % grid);
        let image = &images[i * image_len..(i + 1) * image_len];
        for c in 0..channels {
            for ky in 0..patch {
                // One kernel row of the patch is contiguous in the image.
                let src = c * size * size + (py * patch + ky) * size + px * patch;
                let dst = (c * patch + ky) * patch;
                o[dst..dst + patch].copy_from_slice(&image[src..src + patch]);
            }
        }
    });
}

/// Per sequence b: `row` (`cols` values), then the rows of `rest` for b.
pub fn prepend_weight_row(
    row: &[f32],
    rest: &[f32],
    cols: usize,
    rest_seg: &Segments,
    out_seg: &Segments,
    out: &mut [f32],
) {
    for b in 0..rest_seg.count() {
        let (r, o) = (rest_seg.range(b), out_seg.range(b));
        out[o.start * cols..(o.start + 1) * cols].copy_from_slice(&row[..cols]);
        out[(o.start + 1) * cols..o.end * cols].copy_from_slice(&rest[r.start * cols..r.end * cols]);
    }
}

/// CLIP's QuickGELU, `x * sigmoid(1.702 x)`: the activation OpenAI trained
/// CLIP with, not the erf GELU (they differ by up to ~2e-2).
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

/// `out[i] = quick_gelu(x[i])`, in parallel; `out` is as long as `x`.
pub fn quick_gelu_all(x: &[f32], out: &mut [f32]) {
    out.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = quick_gelu(v));
}

/// Row b of `out` = the first row of sequence b of `x`.
pub fn first_rows(x: &[f32], cols: usize, segments: &Segments, out: &mut [f32]) {
    for b in 0..segments.count() {
        let start = segments.offsets[b];
        out[b * cols..(b + 1) * cols].copy_from_slice(&x[start * cols..(start + 1) * cols]);
    }
}

impl Operands<'_> {
    pub(super) fn patchify(&self, op: &Op) -> Result<()> {
        let Op::Patchify { images, channels, size, patch, out } = op else { return Err(wrong_op(op, "patchify")) };
        patchify(self.input(*images), *channels, *size, *patch, self.output(*out));
        Ok(())
    }

    pub(super) fn prepend_weight_row(&self, op: &Op) -> Result<()> {
        let Op::PrependWeightRow { row, rest, rest_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "prepend_weight_row"));
        };
        let (row, rest, cols) = (self.weight(*row)?, self.input(*rest), self.desc(*out).cols);
        prepend_weight_row(row, rest, cols, self.seg(*rest_segments), self.seg(*out_segments), self.output(*out));
        Ok(())
    }

    pub(super) fn quick_gelu(&self, x: TensorId, out: TensorId) -> Result<()> {
        quick_gelu_all(self.input(x), self.output(out));
        Ok(())
    }

    pub(super) fn first_rows(&self, op: &Op) -> Result<()> {
        let Op::FirstRows { x, segments, out } = op else { return Err(wrong_op(op, "first_rows")) };
        first_rows(self.input(*x), self.desc(*out).cols, self.seg(*segments), self.output(*out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(i: usize) -> f32 {
        ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0
    }

    /// The conv `out[i, o, py, px] = sum_{c,ky,kx} w[o,c,ky,kx] * img[i, c, py*p+ky, px*p+kx]`
    /// computed directly must equal patchify followed by `patches @ w^T`,
    /// including a size that is not a multiple of the patch (the rest is dropped).
    #[test]
    fn patchify_then_matmul_is_the_strided_conv() {
        for (n, channels, size, patch, out_ch) in [(2, 3, 12, 4, 5), (1, 2, 7, 3, 3), (3, 1, 5, 5, 2), (1, 3, 4, 1, 2)]
        {
            let grid = size / patch;
            let images: Vec<f32> = (0..n * channels * size * size).map(val).collect();
            let w: Vec<f32> = (0..out_ch * channels * patch * patch).map(|i| val(i + 7)).collect();
            let k = channels * patch * patch;
            let mut patches = vec![f32::NAN; n * grid * grid * k];
            patchify(&images, channels, size, patch, &mut patches);
            for i in 0..n {
                for py in 0..grid {
                    for px in 0..grid {
                        let row = &patches[((i * grid + py) * grid + px) * k..][..k];
                        for o in 0..out_ch {
                            let got: f64 = row.iter().zip(&w[o * k..]).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let mut want = 0.0f64;
                            for c in 0..channels {
                                for ky in 0..patch {
                                    for kx in 0..patch {
                                        let wv = w[((o * channels + c) * patch + ky) * patch + kx] as f64;
                                        let y = py * patch + ky;
                                        let x = px * patch + kx;
                                        want += wv * images[((i * channels + c) * size + y) * size + x] as f64;
                                    }
                                }
                            }
                            assert!((got - want).abs() < 1e-9, "n{n} c{channels} s{size} p{patch}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn prepend_weight_row_then_first_rows_round_trips() {
        let cols = 3;
        let rest_seg = Segments::from_lengths([2, 1, 4]);
        let out_seg = Segments::from_lengths([3, 2, 5]);
        let rest: Vec<f32> = (0..rest_seg.total() * cols).map(|i| i as f32).collect();
        let row = [-1.0, -2.0, -3.0];
        let mut out = vec![f32::NAN; out_seg.total() * cols];
        prepend_weight_row(&row, &rest, cols, &rest_seg, &out_seg, &mut out);
        for b in 0..3 {
            let (o, r) = (out_seg.range(b), rest_seg.range(b));
            assert_eq!(&out[o.start * cols..(o.start + 1) * cols], &row);
            assert_eq!(&out[(o.start + 1) * cols..o.end * cols], &rest[r.start * cols..r.end * cols]);
        }
        let mut firsts = vec![f32::NAN; 3 * cols];
        first_rows(&out, cols, &out_seg, &mut firsts);
        assert_eq!(firsts, [row, row, row].concat());
        first_rows(&rest, cols, &rest_seg, &mut firsts);
        assert_eq!(firsts, [0.0, 1.0, 2.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn quick_gelu_is_x_sigmoid_1702_x() {
        for x in [-20.0f32, -3.0, -0.5, 0.0, 0.25, 1.0, 4.0, 50.0] {
            let want = x as f64 / (1.0 + (-1.702 * x as f64).exp());
            assert!((quick_gelu(x) as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{x}");
        }
        assert_eq!(quick_gelu(-200.0), -0.0, "no NaN from exp overflow");
    }
}
