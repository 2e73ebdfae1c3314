//! CLIP image preprocessing (lova-model.md section 2), bit-compatible with the
//! reference's Pillow + torchvision chain: resize the shorter side to S with
//! Pillow's bicubic (`Image.resize(..., BICUBIC)`), the longer side to
//! `floor(S * long / short)`, centre-crop S x S at `round((W - S) / 2)`,
//! `round((H - S) / 2)` (half to even, as Python rounds), scale to [0, 1] and
//! normalise with CLIP's mean and std.
//!
//! The resize reproduces Pillow's `Resample.c`: a = -0.5 cubic, support
//! widened by the scale when shrinking, coefficients normalised and turned into
//! 22-bit fixed point, a horizontal pass rounded to u8, then a vertical pass
//! rounded to u8. Since every output pixel depends only on its own row and
//! column of coefficients, only the rows and columns that survive the crop are
//! computed: the result is identical and about half the work for 16:9 video.

use rayon::prelude::*;

/// CLIP's per-channel normalisation (OpenAI `clip.load` preprocessing).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (OpenAI `clip.load` preprocessing), paired with `CLIP_MEAN`.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// An RGB image, 8 bits per channel, rows of `width * 3` interleaved bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels, row-major, `height * width * 3` bytes.
    pub data: Vec<u8>,
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis: for
/// each output position its first input index and fixed-point weights.
#[derive(Debug, Clone)]
struct AxisCoeffs {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn axis_coeffs(in_size: usize, out_size: usize) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates toward zero after adding 0.5 (`(int)(... + 0.5)`).
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let w: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
        let total: f64 = w.iter().sum();
        let fixed = w
            .iter()
            .map(|&v| {
                let v = if total != 0.0 { v / total } else { v };
                let scaled = v * (1u32 << PRECISION_BITS) as f64;
                (if v < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
            })
            .collect();
        first.push(xmin);
        weights.push(fixed);
    }
    AxisCoeffs { first, weights }
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The resized size of a `width` x `height` image whose shorter side becomes `size`.
pub fn resized_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    if width <= height { (size, size * height / width) } else { (size * width / height, size) }
}

/// Python's `round((a - b) / 2)` for the crop offset: half to even.
fn crop_offset(resized: usize, size: usize) -> usize {
    let d = resized - size;
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
}

/// Resize-and-crop plans, cached per input size (a video has one size).
#[derive(Debug, Clone)]
pub struct Preprocessor {
    size: usize,
    plan: Option<(usize, usize, Plan)>,
}

#[derive(Debug, Clone)]
struct Plan {
    /// `None` where the axis keeps its size (Pillow skips that pass).
    horizontal: Option<AxisCoeffs>,
    vertical: Option<AxisCoeffs>,
    left: usize,
    top: usize,
}

impl Preprocessor {
    /// Preprocessing to `size` x `size` (224 for CLIP ViT-L/14).
    pub fn new(size: usize) -> Self {
        Preprocessor { size, plan: None }
    }

    /// Output side length in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    fn plan(&mut self, width: usize, height: usize) -> &Plan {
        if !matches!(&self.plan, Some((w, h, _)) if *w == width && *h == height) {
            let (rw, rh) = resized_size(width, height, self.size);
            let plan = Plan {
                horizontal: (rw != width).then(|| axis_coeffs(width, rw)),
                vertical: (rh != height).then(|| axis_coeffs(height, rh)),
                left: crop_offset(rw, self.size),
                top: crop_offset(rh, self.size),
            };
            self.plan = Some((width, height, plan));
        }
        &self.plan.as_ref().expect("set above").2
    }

    /// The resized and centre-cropped image, `size` x `size` RGB (what Pillow's
    /// resize followed by torchvision's CenterCrop gives).
    pub fn resize_and_crop(&mut self, image: &RgbImage) -> RgbImage {
        let s = self.size;
        let (w, h) = (image.width, image.height);
        let plan = self.plan(w, h);
        // Input rows the vertical pass reads for the kept output rows.
        let rows: Vec<usize> = match &plan.vertical {
            Some(v) => {
                let lo = v.first[plan.top];
                let last = plan.top + s - 1;
                let hi = v.first[last] + v.weights[last].len();
                (lo..hi).collect()
            }
            None => (plan.top..plan.top + s).collect(),
        };
        let row0 = rows[0];
        // Horizontal pass over the needed rows and kept columns: [rows, s, 3] u8.
        let mut tmp = vec![0u8; rows.len() * s * 3];
        match &plan.horizontal {
            Some(hc) => {
                for (r, &y) in rows.iter().enumerate() {
                    let src = &image.data[y * w * 3..(y + 1) * w * 3];
                    let dst = &mut tmp[r * s * 3..(r + 1) * s * 3];
                    for xo in 0..s {
                        let xx = plan.left + xo;
                        let x0 = hc.first[xx];
                        let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                        for (k, &wk) in hc.weights[xx].iter().enumerate() {
                            let p = &src[(x0 + k) * 3..(x0 + k) * 3 + 3];
                            acc[0] += p[0] as i32 * wk;
                            acc[1] += p[1] as i32 * wk;
                            acc[2] += p[2] as i32 * wk;
                        }
                        dst[xo * 3] = clip8(acc[0]);
                        dst[xo * 3 + 1] = clip8(acc[1]);
                        dst[xo * 3 + 2] = clip8(acc[2]);
                    }
                }
            }
            None => {
                for (r, &y) in rows.iter().enumerate() {
                    let start = (y * w + plan.left) * 3;
                    tmp[r * s * 3..(r + 1) * s * 3].copy_from_slice(&image.data[start..start + s * 3]);
                }
            }
        }
        let out = match &plan.vertical {
            Some(vc) => {
                let mut out = vec![0u8; s * s * 3];
                let row_len = s * 3;
                for yo in 0..s {
                    let yy = plan.top + yo;
                    let y0 = vc.first[yy] - row0;
                    let mut acc = vec![1i32 << (PRECISION_BITS - 1); row_len];
                    for (k, &wk) in vc.weights[yy].iter().enumerate() {
                        let src = &tmp[(y0 + k) * row_len..(y0 + k + 1) * row_len];
                        for (a, &p) in acc.iter_mut().zip(src) {
                            *a += p as i32 * wk;
                        }
                    }
                    for (o, a) in out[yo * row_len..(yo + 1) * row_len].iter_mut().zip(&acc) {
                        *o = clip8(*a);
                    }
                }
                out
            }
            None => tmp,
        };
        RgbImage { width: s, height: s, data: out }
    }

    /// The CLIP input for one image: `[3, size, size]` (CHW), normalised, into `out`.
    pub fn preprocess_into(&mut self, image: &RgbImage, out: &mut [f32]) {
        let cropped = self.resize_and_crop(image);
        normalise_into(&cropped, out);
    }
}

/// `[H, W, 3]` u8 -> `[3, H, W]` f32, `(v / 255 - mean) / std` per channel.
pub fn normalise_into(image: &RgbImage, out: &mut [f32]) {
    let plane = image.width * image.height;
    assert_eq!(out.len(), 3 * plane, "output buffer size");
    for c in 0..3 {
        let (scale, offset) = (1.0 / (255.0 * CLIP_STD[c]), CLIP_MEAN[c] / CLIP_STD[c]);
        for (o, px) in out[c * plane..(c + 1) * plane].iter_mut().zip(image.data.chunks_exact(3)) {
            *o = px[c] as f32 * scale - offset;
        }
    }
}

/// Preprocesses a batch of frames in parallel into `[n, 3, size, size]`.
pub fn preprocess_batch(size: usize, frames: &[RgbImage]) -> Vec<f32> {
    let per = 3 * size * size;
    let mut out = vec![0.0f32; frames.len() * per];
    out.par_chunks_mut(per)
        .zip(frames)
        .for_each_init(|| Preprocessor::new(size), |pre, (dst, frame)| pre.preprocess_into(frame, dst));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_offsets_follow_torchvision() {
        assert_eq!(resized_size(640, 360, 224), (398, 224));
        assert_eq!(resized_size(321, 241, 224), (298, 224));
        assert_eq!(resized_size(48, 64, 224), (224, 298));
        // round(174 / 2) = 87, round(75 / 2) = round(37.5) = 38, round(73 / 2) = round(36.5) = 36.
        assert_eq!(crop_offset(398, 224), 87);
        assert_eq!(crop_offset(299, 224), 38);
        assert_eq!(crop_offset(297, 224), 36);
        assert_eq!(crop_offset(224, 224), 0);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 398), (48, 224), (360, 224), (241, 224)] {
            let c = axis_coeffs(i, o);
            for w in &c.weights {
                let sum: i64 = w.iter().map(|&v| v as i64).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64, "{i}->{o}: {sum}");
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let image = RgbImage { width: 50, height: 30, data: [10u8, 128, 250].repeat(50 * 30) };
        let out = Preprocessor::new(24).resize_and_crop(&image);
        assert_eq!((out.width, out.height), (24, 24));
        assert!(out.data.chunks_exact(3).all(|p| p == [10, 128, 250]));
    }
}
