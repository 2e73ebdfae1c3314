//! Video input (lova-model.md section 2): a video file decoded by FFmpeg, or a
//! folder of images at a given frame rate, sampled at the model's frame rate
//! and preprocessed for CLIP.
//!
//! Frame selection happens inside FFmpeg: the source frame numbers the model
//! needs are computed here (from the formula for constant-rate video, from the
//! packet timestamps `ffprobe` lists for variable-rate video) and handed to
//! FFmpeg's `select` filter as an expression over the frame number `n`. FFmpeg
//! still decodes every frame (a codec cannot skip them), but only the selected
//! ones are converted to RGB and sent through the pipe; `-vsync passthrough`
//! keeps it from duplicating or dropping frames. One `select` path serves
//! both kinds of video, and the indices are computed (and tested) in Rust
//! rather than in FFmpeg's floating-point expression language: the `fps`
//! filter rounds timestamps its own way and would not give the reference's
//! `floor(src_fps * t + 1e-5)`.

pub mod ffmpeg;
mod folder;
/// Muxing generated audio back into a video with FFmpeg.
pub mod mux;
/// CLIP image preprocessing, bit-compatible with the reference.
pub mod preprocess;
/// Which source frame each model frame comes from.
pub mod sampling;

use std::path::{Path, PathBuf};

pub use folder::{image_files, is_image};
pub use preprocess::{Preprocessor, RgbImage, preprocess_batch};

use crate::error::{Error, Result};

/// Extensions of files taken for videos when a folder of videos is given.
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "wmv"];

/// What `infer --mux` inserts before a video's extension in the default name
/// of its output (`clip.mp4` -> `clip.with-audio.mp4`).
pub const MUX_TAG: &str = "with-audio";

/// The default name of the video with generated audio for input `video`.
pub fn default_mux_path(video: &Path) -> PathBuf {
    video.with_extension(format!("{MUX_TAG}.mp4"))
}

/// Whether `path` is named like a video this tool wrote (`*.with-audio.<ext>`):
/// such files are outputs, never inputs of a folder run (running on a folder a
/// second time made `clip.with-audio.with-audio.mp4`).
pub fn is_own_output(path: &Path) -> bool {
    path.file_stem().and_then(|s| Path::new(s).extension()).is_some_and(|tag| tag == MUX_TAG)
}

/// Whether `path` is named like a video (`VIDEO_EXTENSIONS`, any case).
pub fn is_video_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|v| v.eq_ignore_ascii_case(e)))
}

/// The videos directly in `dir`, sorted by name: files named like videos,
/// without this tool's own outputs (`is_own_output`) and hidden files (a
/// partial output being written is one).
pub fn video_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut videos = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::list(dir, e))? {
        let path = entry.map_err(|e| Error::list(dir, e))?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_file() && is_video_name(&path) && !is_own_output(&path) && !hidden {
            videos.push(path);
        }
    }
    videos.sort();
    Ok(videos)
}

/// A video input, opened and sampled: which frames will come, and how long it is.
pub struct VideoReader {
    /// The video file or image folder read.
    pub path: PathBuf,
    /// Duration D in seconds (the container's, or images / fps).
    pub duration: f64,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Source frame rate (nominal for variable-rate video).
    pub source_fps: f64,
    /// Whether the source has a variable frame rate (frames are then chosen by timestamp).
    pub variable_rate: bool,
    /// Source frame index of each model frame (length N).
    pub indices: Vec<usize>,
    source: Source,
    /// The frame last read, its source index, and how many model frames took it so far.
    current: Option<(usize, RgbImage)>,
    next: usize,
}

enum Source {
    Ffmpeg { decoder: Option<ffmpeg::Decoder>, distinct: Vec<usize> },
    Images(Vec<PathBuf>),
    Memory(Vec<RgbImage>),
}

impl VideoReader {
    /// Probes a video file and plans its sampling at `fps` frames per second.
    /// Nothing is decoded yet.
    pub fn open_video(path: &Path, fps: f64) -> Result<Self> {
        let probe = ffmpeg::probe(path)?;
        let n = sampling::frame_count(probe.duration, fps);
        let (indices, variable_rate) = match &probe.frame_times {
            Some(times) if !sampling::is_constant_rate(times, probe.frame_rate) => {
                (sampling::on_screen_indices(n, fps, times), true)
            }
            _ => (sampling::constant_rate_indices(n, fps, probe.frame_rate, probe.frames), false),
        };
        let distinct = sampling::distinct(&indices);
        Ok(VideoReader {
            path: path.to_path_buf(),
            duration: probe.duration,
            width: probe.width,
            height: probe.height,
            source_fps: probe.frame_rate,
            variable_rate,
            indices,
            source: Source::Ffmpeg { decoder: None, distinct },
            current: None,
            next: 0,
        })
    }

    /// A folder of PNG/JPEG images (in name order) as a video at `src_fps`,
    /// sampled at `fps`. Only the sampled images are read.
    pub fn open_images(dir: &Path, src_fps: f64, fps: f64) -> Result<Self> {
        if !(src_fps.is_finite() && src_fps > 0.0) {
            return Err(Error::video(dir, format!("frame rate {src_fps} is not a positive number")));
        }
        let files = image_files(dir)?;
        if files.is_empty() {
            return Err(Error::video(dir, "holds no PNG or JPEG images"));
        }
        let first = folder::read_image(&files[0])?;
        let duration = files.len() as f64 / src_fps;
        let n = sampling::frame_count(duration, fps);
        let indices = sampling::constant_rate_indices(n, fps, src_fps, files.len());
        Ok(VideoReader {
            path: dir.to_path_buf(),
            duration,
            width: first.width,
            height: first.height,
            source_fps: src_fps,
            variable_rate: false,
            indices,
            source: Source::Images(files),
            current: None,
            next: 0,
        })
    }

    /// Decoded frames in memory (any size, all the same) as a video at
    /// `src_fps`, sampled at `fps`; `name` stands for the path in messages.
    pub fn from_frames(name: &str, frames: Vec<RgbImage>, src_fps: f64, fps: f64) -> Result<Self> {
        if !(src_fps.is_finite() && src_fps > 0.0) {
            return Err(Error::video(name, format!("frame rate {src_fps} is not a positive number")));
        }
        let Some(first) = frames.first() else { return Err(Error::video(name, "holds no frames")) };
        let (width, height) = (first.width, first.height);
        if let Some(i) = frames.iter().position(|f| {
            (f.width, f.height) != (width, height) || f.data.len() != f.width * f.height * 3 || f.width == 0
        }) {
            return Err(Error::video(
                name,
                format!(
                    "frame {i} is not a {width}x{height} RGB image of {} bytes like frame 0 (or is empty)",
                    width * height * 3
                ),
            ));
        }
        let duration = frames.len() as f64 / src_fps;
        let n = sampling::frame_count(duration, fps);
        let indices = sampling::constant_rate_indices(n, fps, src_fps, frames.len());
        Ok(VideoReader {
            path: PathBuf::from(name),
            duration,
            width,
            height,
            source_fps: src_fps,
            variable_rate: false,
            indices,
            source: Source::Memory(frames),
            current: None,
            next: 0,
        })
    }

    /// N, the number of model frames.
    pub fn frames(&self) -> usize {
        self.indices.len()
    }

    /// Distinct source frames that will be decoded into RGB.
    pub fn distinct_frames(&self) -> usize {
        sampling::distinct(&self.indices).len()
    }

    /// The next model frame (in order), `None` after the N-th.
    pub fn next_frame(&mut self) -> Result<Option<RgbImage>> {
        let Some(&want) = self.indices.get(self.next) else { return Ok(None) };
        self.next += 1;
        if let Some((have, image)) = &self.current
            && *have == want
        {
            return Ok(Some(image.clone()));
        }
        let image = match &mut self.source {
            Source::Ffmpeg { decoder, distinct } => {
                if decoder.is_none() {
                    *decoder = Some(ffmpeg::Decoder::start(&self.path, self.width, self.height, distinct)?);
                }
                decoder.as_mut().expect("started above").next_frame()?
            }
            Source::Images(files) => folder::read_image(&files[want])?,
            Source::Memory(frames) => frames[want].clone(),
        };
        self.current = Some((want, image.clone()));
        Ok(Some(image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_lists_its_videos_but_not_what_this_tool_wrote() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.mp4",
            "a.MKV",
            "a.with-audio.mp4",
            "b.with-audio.mp4",
            "c.with-audio.with-audio.mp4",
            ".a.with-audio.mp4.partial-12",
            ".hidden.mp4",
            "a.wav",
            "notes.txt",
            "with-audio.mp4",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("folder.mp4")).unwrap();
        let names: Vec<String> = video_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.MKV", "b.mp4", "with-audio.mp4"]);
        assert_eq!(default_mux_path(Path::new("d/clip.mov")), Path::new("d/clip.with-audio.mp4"));
        assert!(is_own_output(&default_mux_path(Path::new("clip.mp4"))));
    }
}
