//! CLIP preprocessing against Pillow (tools/reference/make_preprocess_fixtures.py):
//! resize with Pillow's bicubic, centre crop, for shrinking, upscaling, odd
//! sizes and an axis already at 224. Required: mean |difference| <= 1/255 per
//! pixel value; the fixed-point port is expected to be exact.

mod common;

use common::fixture;
use lova_fast::video::{Preprocessor, RgbImage};

/// The script's `pattern`, recomputed.
fn pattern(width: usize, height: usize) -> RgbImage {
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let r = x * 255 / (width - 1).max(1);
            let g = y * 255 / (height - 1).max(1);
            let b = if (x + 2 * y) % 23 < 11 { 230 } else { 20 };
            let b = if ((x / 5) + (y / 3)) % 2 == 0 { b } else { (x * y) % 256 };
            data.extend([r as u8, g as u8, b as u8]);
        }
    }
    RgbImage { width, height, data }
}

#[test]
fn resize_and_crop_match_pillow() {
    for (w, h) in [(640, 360), (321, 241), (48, 64), (100, 37), (224, 300), (257, 224)] {
        let want = image::open(fixture(&format!("preprocess/{w}x{h}.png"))).unwrap().into_rgb8();
        assert_eq!((want.width(), want.height()), (224, 224));
        let got = Preprocessor::new(224).resize_and_crop(&pattern(w, h));
        assert_eq!((got.width, got.height), (224, 224));
        let diffs: Vec<u32> = got.data.iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b) as u32).collect();
        let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
        let max = diffs.iter().max().copied().unwrap_or(0);
        println!("{w}x{h}: mean |diff| {mean:.4}, max {max} (of 255)");
        assert!(mean <= 1.0, "{w}x{h}: mean |diff| {mean} > 1/255");
    }
}

#[test]
fn normalised_tensor_is_chw_with_clip_mean_and_std() {
    let image = RgbImage { width: 300, height: 224, data: [255u8, 0, 122].repeat(300 * 224) };
    let mut out = vec![0.0f32; 3 * 224 * 224];
    Preprocessor::new(224).preprocess_into(&image, &mut out);
    let plane = 224 * 224;
    let expect = |v: f32, c: usize| {
        (v / 255.0 - lova_fast::video::preprocess::CLIP_MEAN[c]) / lova_fast::video::preprocess::CLIP_STD[c]
    };
    for (c, v) in [(0, 255.0), (1, 0.0), (2, 122.0)] {
        let want = expect(v, c);
        assert!(out[c * plane..(c + 1) * plane].iter().all(|x| (x - want).abs() < 1e-5), "channel {c}");
    }
}
