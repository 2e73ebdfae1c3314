//! Putting generated audio back into a video: FFmpeg copies the video stream
//! and encodes the WAV as AAC, into a temporary name renamed when complete.

use std::path::Path;
use std::process::{Command, Stdio};

use super::ffmpeg::find_tool;
use crate::error::{Error, Result};
use crate::partial_file::partial_path_for;

/// Writes `out`: the first video stream of `video` (copied) with `wav` as AAC audio.
pub fn mux_audio(video: &Path, wav: &Path, out: &Path) -> Result<()> {
    let ffmpeg = find_tool("ffmpeg")?;
    let tmp = partial_path_for(out)?;
    // The temporary name has no usable extension: name the container.
    let format = match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("mkv") => "matroska",
        Some("mov") => "mov",
        _ => "mp4",
    };
    let result = Command::new(ffmpeg)
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(video)
        .arg("-i")
        .arg(wav)
        .args(["-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-f", format])
        .arg(&tmp)
        .stdin(Stdio::null())
        .output();
    let failure = match result {
        Err(e) => Some(format!("cannot run ffmpeg: {e}")),
        Ok(o) if !o.status.success() => Some(format!("ffmpeg: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Ok(_) => std::fs::rename(&tmp, out).err().map(|e| format!("cannot rename into place: {e}")),
    };
    match failure {
        None => Ok(()),
        Some(reason) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::video(out, format!("muxing the audio into the video failed: {reason}")))
        }
    }
}
