//! Video input on the committed test videos (tools/make_test_videos.sh): how
//! many frames are sampled, which source frames are picked (each test frame's
//! colour encodes its number), and clear errors on bad input. These tests need
//! FFmpeg and fail, rather than skip, without it (CI installs it).

mod common;

use std::path::PathBuf;

use common::fixture;
use lova_fast::video::{VideoReader, sampling};

fn video(name: &str) -> PathBuf {
    fixture(&format!("video/{name}"))
}

fn require_ffmpeg() {
    if let Err(e) = lova_fast::video::ffmpeg::check_tools() {
        panic!("these tests need FFmpeg: {e}");
    }
}

/// The source frame number encoded in a flat test frame's colour.
fn frame_number(image: &lova_fast::video::RgbImage) -> usize {
    let n = (image.width * image.height) as u64;
    let mean = |c: usize| image.data.chunks_exact(3).map(|p| p[c] as u64).sum::<u64>() / n;
    let (r, g) = (mean(0) as usize, mean(1) as usize);
    (r / 16) + 16 * (g / 16)
}

/// Decodes every sampled frame of `name` at 8 fps and returns their source numbers.
fn picked(name: &str) -> (VideoReader, Vec<usize>) {
    require_ffmpeg();
    let mut reader = VideoReader::open_video(&video(name), 8.0).unwrap_or_else(|e| panic!("{e}"));
    let mut numbers = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap_or_else(|e| panic!("{e}")) {
        assert_eq!((frame.width, frame.height), (reader.width, reader.height));
        numbers.push(frame_number(&frame));
    }
    (reader, numbers)
}

fn expected_constant(n: usize, src_fps: f64, frames: usize) -> Vec<usize> {
    (0..n).map(|i| ((src_fps * i as f64 / 8.0 + 1e-5).floor() as usize).min(frames - 1)).collect()
}

#[test]
fn h264_high_profile_with_b_frames_at_25_fps() {
    let (reader, numbers) = picked("h264_25fps.mp4");
    assert_eq!(reader.duration, 4.0);
    assert_eq!(numbers.len(), 32, "ceil(4 s * 8 fps)");
    assert_eq!(numbers, expected_constant(32, 25.0, 100));
    assert_eq!(&numbers[..5], &[0, 3, 6, 9, 12]);
}

#[test]
fn ntsc_29_97_fps() {
    let (reader, numbers) = picked("h264_29.97fps.mp4");
    assert!((reader.source_fps - 30000.0 / 1001.0).abs() < 1e-9);
    // D = 3.003 s: ceil(24.024) = 25 frames, the last one clamped to frame 89.
    assert_eq!(numbers.len(), 25);
    assert_eq!(numbers, expected_constant(25, 30000.0 / 1001.0, 90));
    assert_eq!(*numbers.last().unwrap(), 89);
}

#[test]
fn variable_frame_rate_takes_the_frame_on_screen() {
    let (reader, numbers) = picked("h264_vfr.mp4");
    assert!(reader.variable_rate);
    let n = sampling::frame_count(reader.duration, 8.0);
    assert_eq!(numbers.len(), n);
    // Frames 0..24 start at n * 0.04 s, frames 25..49 at 1 + (n - 25) * 0.1 s.
    let want: Vec<usize> = (0..n)
        .map(|i| {
            let t = i as f64 / 8.0 + 1e-9;
            if t < 1.0 { (t / 0.04).floor() as usize } else { (25 + ((t - 1.0) / 0.1).floor() as usize).min(49) }
        })
        .collect();
    assert_eq!(numbers, want);
}

#[test]
fn odd_size_short_clip_and_vp9() {
    let (reader, numbers) = picked("h264_321x241.mp4");
    assert_eq!((reader.width, reader.height, numbers.len()), (321, 241, 16));
    assert_eq!(numbers, expected_constant(16, 25.0, 50));

    let (reader, numbers) = picked("h264_0.5s.mp4");
    assert_eq!((reader.duration, numbers.len()), (0.5, 4));
    assert_eq!(numbers, expected_constant(4, 24.0, 12));

    let (_, numbers) = picked("vp9_24fps.webm");
    assert_eq!(numbers, expected_constant(16, 24.0, 48));
}

#[test]
fn bad_videos_are_named_errors() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video").unwrap();
    let truncated = dir.path().join("truncated.mp4");
    let bytes = std::fs::read(video("h264_25fps.mp4")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let cases = [
        (text, "not a readable video"),
        (truncated, "truncated.mp4"),
        (video("audio_only.mp4"), "no video stream"),
        (dir.path().join("missing.mp4"), "no such file"),
    ];
    for (path, expected) in cases {
        let message = match VideoReader::open_video(&path, 8.0) {
            Err(e) => e.to_string(),
            Ok(mut r) => loop {
                match r.next_frame() {
                    Err(e) => break e.to_string(),
                    Ok(None) => panic!("{} decoded without error", path.display()),
                    Ok(Some(_)) => {}
                }
            },
        };
        assert!(message.contains(expected), "{}: {message}", path.display());
    }
}

/// Runs FFmpeg with `args` (a test's input preparation).
fn ffmpeg(args: &[&str]) {
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg {args:?}");
}

/// A raw H.264 stream has no container duration and no timestamps, and a
/// Matroska file written to a pipe has timestamps but no duration: both are
/// measured from their frames, and sampled like the file they came from.
#[test]
fn streams_without_a_container_duration_are_measured_from_their_frames() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let src = video("h264_25fps.mp4");
    let raw = dir.path().join("clip.h264");
    ffmpeg(&["-i", common::s(&src), "-c", "copy", "-bsf:v", "h264_mp4toannexb", common::s(&raw)]);
    let piped = dir.path().join("piped.mkv");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ffmpeg -nostdin -v error -i '{}' -c copy -f matroska pipe:1 > '{}'",
            src.display(),
            piped.display()
        ))
        .status()
        .unwrap();
    assert!(out.success());
    let (_, want) = picked("h264_25fps.mp4");
    for path in [raw, piped] {
        let mut reader = VideoReader::open_video(&path, 8.0).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!((reader.duration - 4.0).abs() < 1e-9, "{}: {}", path.display(), reader.duration);
        let mut numbers = Vec::new();
        while let Some(frame) = reader.next_frame().unwrap() {
            numbers.push(frame_number(&frame));
        }
        assert_eq!(numbers, want, "{}", path.display());
    }
}

#[test]
fn a_still_image_named_like_a_video_is_called_an_image() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let jpeg = dir.path().join("frame.jpg");
    ffmpeg(&["-i", common::s(&video("h264_25fps.mp4")), "-frames:v", "1", common::s(&jpeg)]);
    let renamed = dir.path().join("holiday.mp4");
    std::fs::rename(&jpeg, &renamed).unwrap();
    let e = VideoReader::open_video(&renamed, 8.0).err().expect("a JPEG opened as a video").to_string();
    assert!(e.contains("holiday.mp4") && e.contains("still image") && e.contains("mjpeg"), "{e}");
    assert!(!e.contains("how long"), "{e}");
}
