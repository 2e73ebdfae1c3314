//! Which source frame each model frame comes from (lova-model.md section 2):
//! `N = ceil(D * fps)` frames at `t_i = i / fps`; frame `i` is source frame
//! `floor(src_fps * t_i + 1e-5)`, clamped to the last frame, or, when the
//! timestamps are not evenly spaced (variable frame rate), the frame on
//! screen at `t_i` (the last one that starts at or before it).

/// Number of model frames for `duration` seconds at `fps`: `ceil(D * fps)`.
/// A product within 1e-9 of an integer counts as that integer, so that a
/// 2.000000 s clip at 8 fps is 16 frames despite floating point.
pub fn frame_count(duration: f64, fps: f64) -> usize {
    let x = duration * fps;
    let r = x.round();
    if (x - r).abs() < 1e-9 { r as usize } else { x.ceil() as usize }
}

/// Source frame index of each of `n` model frames, for a constant-rate source.
pub fn constant_rate_indices(n: usize, fps: f64, src_fps: f64, src_frames: usize) -> Vec<usize> {
    let last = src_frames.saturating_sub(1);
    (0..n).map(|i| ((src_fps * (i as f64 / fps) + 1e-5).floor() as usize).min(last)).collect()
}

/// Source frame index of each of `n` model frames: the frame on screen at
/// `t_i`, given each frame's start time (sorted, the first at 0).
pub fn on_screen_indices(n: usize, fps: f64, times: &[f64]) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let t = i as f64 / fps + 1e-6;
            times.partition_point(|&s| s <= t).saturating_sub(1)
        })
        .collect()
}

/// Whether `times` are the times of a constant `rate` (each within half a frame).
pub fn is_constant_rate(times: &[f64], rate: f64) -> bool {
    times.iter().enumerate().all(|(k, &t)| (t * rate - k as f64).abs() < 0.5)
}

/// Sorted distinct values of a non-decreasing index list.
pub fn distinct(indices: &[usize]) -> Vec<usize> {
    let mut d = indices.to_vec();
    d.dedup();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_indices() {
        assert_eq!(frame_count(2.0, 8.0), 16);
        assert_eq!(frame_count(2.01, 8.0), 17);
        assert_eq!(frame_count(0.5, 8.0), 4);
        assert_eq!(constant_rate_indices(5, 8.0, 25.0, 50), vec![0, 3, 6, 9, 12]);
        // 29.97 fps: floor(29.97 * i / 8 + 1e-5).
        assert_eq!(constant_rate_indices(4, 8.0, 30000.0 / 1001.0, 60), vec![0, 3, 7, 11]);
        // A source slower than 8 fps repeats frames; past the end, the last frame.
        assert_eq!(constant_rate_indices(6, 8.0, 4.0, 2), vec![0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn variable_rate_picks_the_frame_on_screen() {
        let times = [0.0, 0.1, 0.5, 0.52, 1.0];
        assert_eq!(on_screen_indices(9, 8.0, &times), vec![0, 1, 1, 1, 2, 3, 3, 3, 4]);
        assert!(!is_constant_rate(&times, 5.0));
        assert!(is_constant_rate(&[0.0, 0.04, 0.08], 25.0));
    }
}
