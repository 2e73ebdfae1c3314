//! Video input speed: probe + decode + frame selection + CLIP preprocessing of
//! one video, as `infer` does it (frames in chunks of 32, preprocessed in
//! parallel), without CLIP itself.
//!
//! ```sh
//! ffmpeg -f lavfi -i testsrc2=s=640x360:r=30:d=60 -c:v libx264 -profile:v high -bf 3 -pix_fmt yuv420p /tmp/speed60.mp4
//! LOVA_BENCH_VIDEO=/tmp/speed60.mp4 cargo bench --bench video_input
//! ```

use std::time::Instant;

use lova_fast::video::{VideoReader, preprocess_batch};

fn main() {
    let Some(path) = std::env::var_os("LOVA_BENCH_VIDEO") else {
        eprintln!("video_input: set LOVA_BENCH_VIDEO=path/to/video.mp4 to measure (nothing measured)");
        return;
    };
    for run in 0..3 {
        let started = Instant::now();
        let mut reader = VideoReader::open_video(path.as_ref(), 8.0).expect("open the video");
        let probed = started.elapsed();
        let mut chunk = Vec::new();
        let mut frames = 0;
        let mut checksum = 0.0f64;
        loop {
            let frame = reader.next_frame().expect("decode");
            let done = frame.is_none();
            chunk.extend(frame);
            if chunk.len() == 32 || (done && !chunk.is_empty()) {
                let pixels = preprocess_batch(224, &chunk);
                checksum += pixels[0] as f64;
                frames += chunk.len();
                chunk.clear();
            }
            if done {
                break;
            }
        }
        println!(
            "run {run}: {} {}x{} {:.2} s at {:.2} fps: {frames} frames at 8 fps ({} distinct) in {:.3} s \
             (probe {:.3} s) [checksum {checksum:.3}]",
            path.to_string_lossy(),
            reader.width,
            reader.height,
            reader.duration,
            reader.source_fps,
            reader.distinct_frames(),
            started.elapsed().as_secs_f64(),
            probed.as_secs_f64(),
        );
    }
}
