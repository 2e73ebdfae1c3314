//! FFmpeg as a subprocess: `ffprobe` (JSON) for what a file holds, `ffmpeg`
//! for decoding the chosen frames to `rgb24` rawvideo on a pipe, one frame in
//! memory at a time. Both are looked up on PATH; when one is missing the error
//! says how to install it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::Deserialize;

use super::preprocess::RgbImage;
use crate::error::{Error, Result};

/// The path of `tool` (`ffmpeg`, `ffprobe`) on PATH.
pub fn find_tool(tool: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file()).ok_or(Error::ToolMissing { tool })
}

/// Fails with the install hint unless both `ffmpeg` and `ffprobe` are available.
pub fn check_tools() -> Result<()> {
    find_tool("ffprobe")?;
    find_tool("ffmpeg")?;
    Ok(())
}

/// What `ffprobe` says about a file's first video stream.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The container's duration in seconds.
    pub duration: f64,
    /// Displayed size (after the rotation FFmpeg applies while decoding).
    pub width: usize,
    /// Displayed height in pixels (see `width`).
    pub height: usize,
    /// Nominal frame rate (average, else the stream's base rate).
    pub frame_rate: f64,
    /// Presentation times of the frames relative to the first, in display
    /// order (from packets: demuxing only, no decoding); `None` when the
    /// container has no timestamps.
    pub frame_times: Option<Vec<f64>>,
    /// Number of frames the decoder will deliver.
    pub frames: usize,
    /// Codec name of the video stream as ffprobe reports it (`h264`, ...).
    pub codec: String,
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    packets: Vec<PacketJson>,
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(Deserialize)]
struct PacketJson {
    pts_time: Option<String>,
    flags: Option<String>,
}

#[derive(Deserialize)]
struct StreamJson {
    width: Option<usize>,
    height: Option<usize>,
    codec_name: Option<String>,
    r_frame_rate: Option<String>,
    avg_frame_rate: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct FormatJson {
    duration: Option<String>,
    format_name: Option<String>,
}

/// FFmpeg's demuxers for single pictures (`jpeg_pipe`, `png_pipe`, ...,
/// `image2`): a file read by one of them is a still image, whatever its name.
fn is_image_format(format_name: &str) -> bool {
    format_name.split(',').any(|f| f.ends_with("_pipe") || f == "image2")
}

fn rational(text: &Option<String>) -> Option<f64> {
    let text = text.as_deref()?;
    let (n, d) = text.split_once('/').unwrap_or((text, "1"));
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (n > 0.0 && d > 0.0).then_some(n / d)
}

fn seconds(text: &Option<String>) -> Option<f64> {
    text.as_deref()?.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Last lines of a tool's stderr, for error messages.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" | ")
}

/// Runs `ffprobe` on `path`.
pub fn probe(path: &Path) -> Result<Probe> {
    if !path.is_file() {
        return Err(Error::video(path, "no such file"));
    }
    let ffprobe = find_tool("ffprobe")?;
    let out = Command::new(ffprobe)
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg(
            "format=duration,format_name:stream=width,height,codec_name,r_frame_rate,avg_frame_rate,duration:\
             stream_side_data=rotation:packet=pts_time,flags",
        )
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::video(path, format!("cannot run ffprobe: {e}")))?;
    if !out.status.success() {
        return Err(Error::video(path, format!("not a readable video (ffprobe: {})", tail(&out.stderr))));
    }
    let json: ProbeJson = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::video(path, format!("unexpected ffprobe output: {e}")))?;
    let container_duration = json.format.as_ref().and_then(|f| seconds(&f.duration));
    let Some(stream) = json.streams.first() else {
        if container_duration == Some(0.0) {
            return Err(Error::video(path, "is empty: no video frames (duration 0 s)"));
        }
        return Err(Error::video(path, "has no video stream (an audio-only or data file?)"));
    };
    if let Some(format) = json.format.as_ref().and_then(|f| f.format_name.as_deref())
        && is_image_format(format)
    {
        return Err(Error::video(
            path,
            format!(
                "is a still image ({} read as `{format}`), not a video: give a video file, or a folder of \
                 images with their frame rate (--fps)",
                stream.codec_name.as_deref().unwrap_or("unknown codec")
            ),
        ));
    }
    let (Some(mut width), Some(mut height)) = (stream.width, stream.height) else {
        return Err(Error::video(path, "the video stream has no frame size"));
    };
    if width == 0 || height == 0 {
        return Err(Error::video(path, format!("the video stream has frame size {width}x{height}")));
    }
    let rotation = stream.side_data_list.iter().find_map(|s| s["rotation"].as_f64()).unwrap_or(0.0);
    if (rotation.abs() as i64) % 180 == 90 {
        std::mem::swap(&mut width, &mut height);
    }
    // Frames the decoder outputs: packets not flagged for discarding (edit lists).
    let kept: Vec<&PacketJson> =
        json.packets.iter().filter(|p| !p.flags.as_deref().unwrap_or("").contains('D')).collect();
    let frames = kept.len();
    let mut times: Option<Vec<f64>> = kept.iter().map(|p| seconds(&p.pts_time)).collect();
    if let Some(t) = &mut times {
        t.sort_by(f64::total_cmp);
        let t0 = t.first().copied().unwrap_or(0.0);
        t.iter_mut().for_each(|v| *v -= t0);
    }
    let frame_rate = rational(&stream.avg_frame_rate)
        .or_else(|| rational(&stream.r_frame_rate))
        .ok_or_else(|| Error::video(path, "the video stream has no frame rate"))?;
    // A raw stream (`.h264`) or a file written to a pipe (Matroska) may not say
    // how long it is; the packets do: from their timestamps (the last frame
    // lasts one nominal frame interval), else from their count at the nominal rate.
    let duration =
        json.format.as_ref().and_then(|f| seconds(&f.duration)).or_else(|| seconds(&stream.duration)).unwrap_or_else(
            || match &times {
                Some(t) if t.len() > 1 => t[t.len() - 1] + 1.0 / frame_rate,
                _ => frames as f64 / frame_rate,
            },
        );
    if frames == 0 || duration <= 0.0 {
        return Err(Error::video(path, format!("has no video frames (duration {duration} s, {frames} frames)")));
    }
    Ok(Probe {
        duration,
        width,
        height,
        frame_rate,
        frame_times: times,
        frames,
        codec: stream.codec_name.clone().unwrap_or_default(),
    })
}

/// An `ffmpeg` process decoding the frames with the given (sorted, distinct)
/// indices to `rgb24` on its stdout. A reader thread keeps a few frames
/// queued so that FFmpeg decodes while the caller preprocesses.
pub struct Decoder {
    child: Child,
    frames: Receiver<Result<RgbImage>>,
}

/// Frames queued between the pipe and the caller.
const QUEUE: usize = 8;

/// An FFmpeg `select` expression true for the frame numbers in `indices`
/// (sorted, distinct), runs merged into `between`. FFmpeg's expression parser
/// refuses long flat sums (a few hundred terms), so the terms are summed as a
/// balanced tree of parenthesised halves: depth log2(terms).
pub fn select_expression(indices: &[usize]) -> String {
    let mut terms = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        terms.push(if i == j {
            format!("eq(n,{})", indices[i])
        } else {
            format!("between(n,{},{})", indices[i], indices[j])
        });
        i = j + 1;
    }
    fn sum(terms: &[String]) -> String {
        if terms.len() <= 8 {
            return terms.join("+");
        }
        let (a, b) = terms.split_at(terms.len() / 2);
        format!("({})+({})", sum(a), sum(b))
    }
    sum(&terms)
}

impl Decoder {
    /// Starts decoding `path`; only the frames numbered `indices` (decode order
    /// = display order, counted from 0) are converted to RGB and sent.
    pub fn start(path: &Path, width: usize, height: usize, indices: &[usize]) -> Result<Self> {
        let ffmpeg = find_tool("ffmpeg")?;
        let filter = format!("select='{}'", select_expression(indices));
        let mut child = Command::new(ffmpeg)
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
            .arg(path)
            .args(["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", &filter])
            // Passthrough: one output frame per selected frame, no duplicates or
            // drops to make the output rate constant.
            .args(["-vsync", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::video(path, format!("cannot run ffmpeg: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let (send, frames) = sync_channel(QUEUE);
        let (path, expected) = (path.to_path_buf(), indices.len());
        std::thread::spawn(move || read_frames(stdout, stderr, send, path, width, height, expected));
        Ok(Decoder { child, frames })
    }

    /// The next selected frame; an error when the stream ends before all came.
    pub fn next_frame(&mut self) -> Result<RgbImage> {
        self.frames.recv().unwrap_or_else(|_| Err(Error::InvalidInput("the frame reader stopped".into())))
    }
}

/// Reads `expected` frames from FFmpeg's stdout into `send`; on a short read,
/// sends the error built from FFmpeg's stderr.
fn read_frames(
    mut stdout: ChildStdout,
    stderr: JoinHandle<Vec<u8>>,
    send: SyncSender<Result<RgbImage>>,
    path: PathBuf,
    width: usize,
    height: usize,
    expected: usize,
) {
    for delivered in 0..expected {
        let mut data = vec![0u8; width * height * 3];
        let mut filled = 0;
        let mut failure = None;
        while filled < data.len() {
            match stdout.read(&mut data[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(format!("reading decoded frames: {e}"));
                    break;
                }
            }
        }
        if filled < data.len() {
            drop(stdout);
            let stderr = stderr.join().unwrap_or_default();
            let why = failure.unwrap_or_else(|| {
                let t = tail(&stderr);
                if t.is_empty() {
                    "the stream ended early (damaged or truncated file?)".to_string()
                } else {
                    format!("ffmpeg: {t}")
                }
            });
            let _ =
                send.send(Err(Error::video(&path, format!("decoded {delivered} of {expected} needed frames: {why}"))));
            return;
        }
        if send.send(Ok(RgbImage { width, height, data })).is_err() {
            return;
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // Stop a decoder whose frames are no longer wanted (error or early end).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
