//! `POST /v1/audio`'s multipart form: read into the job's folder, then checked
//! as a `Request` before anything is queued.

use std::path::{Path, PathBuf};

use axum::extract::Multipart;
use axum::extract::multipart::MultipartError;
use tokio::io::AsyncWriteExt;

use super::api::ApiError;
use super::jobs::Format;
use crate::config::LovaConfig;
use crate::pipeline::{Input, Request, RequestPlan};

/// The uploaded input.
#[derive(Debug, Clone)]
pub enum Upload {
    /// A video file.
    Video(PathBuf),
    /// A features safetensors file (`features` `[N, cond_token_dim]`).
    Features(PathBuf),
}

/// The form, parsed.
#[derive(Debug, Clone)]
pub struct Form {
    /// The input.
    pub upload: Upload,
    /// Noise seed (default: a random one, shown in the job's status).
    pub seed: Option<u64>,
    /// Sampler steps.
    pub steps: Option<usize>,
    /// Guidance scale.
    pub cfg: Option<f32>,
    /// DPM++ SDE eta.
    pub eta: Option<f64>,
    /// Audio length (default: the input's).
    pub seconds: Option<f64>,
    /// What the result is.
    pub format: Format,
}

/// Longest text field: numbers and a format name need a few bytes.
const MAX_TEXT_FIELD: usize = 256;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_form", message)
}

fn multipart_error(e: MultipartError) -> ApiError {
    let status = e.status();
    if status.as_u16() == 413 {
        return ApiError::new(413, "too_large", "the upload is larger than the server accepts (--max-upload-mb)");
    }
    ApiError::new(status.as_u16(), "bad_form", format!("malformed multipart form: {}", e.body_text()))
}

/// Reads the form, writing the file field into `dir`; `max_bytes` bounds the file.
pub async fn read(mut multipart: Multipart, dir: &Path, max_bytes: u64) -> Result<Form, ApiError> {
    let mut upload = None;
    let (mut seed, mut steps, mut cfg, mut eta, mut seconds, mut format) = (None, None, None, None, None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "video" | "features" => {
                if upload.is_some() {
                    return Err(bad("give exactly one of the fields `video` and `features`"));
                }
                // Fixed names: nothing of the client's file name reaches the file system.
                let path = dir.join(if name == "video" { "upload-video" } else { "upload-features.safetensors" });
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| ApiError::new(500, "internal", format!("cannot store the upload: {e}")))?;
                let mut written = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    written += chunk.len() as u64;
                    if written > max_bytes {
                        return Err(ApiError::new(
                            413,
                            "too_large",
                            format!("the upload is larger than {max_bytes} bytes (--max-upload-mb)"),
                        ));
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| ApiError::new(500, "internal", format!("cannot store the upload: {e}")))?;
                }
                file.flush()
                    .await
                    .map_err(|e| ApiError::new(500, "internal", format!("cannot store the upload: {e}")))?;
                upload = Some(if name == "video" { Upload::Video(path) } else { Upload::Features(path) });
            }
            "seed" | "steps" | "cfg" | "eta" | "seconds" | "format" => {
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    text.extend_from_slice(&chunk);
                    if text.len() > MAX_TEXT_FIELD {
                        return Err(bad(format!("field `{name}` is longer than {MAX_TEXT_FIELD} bytes")));
                    }
                }
                let text = String::from_utf8(text).map_err(|_| bad(format!("field `{name}` is not UTF-8 text")))?;
                let text = text.trim();
                match name.as_str() {
                    "seed" => seed = Some(number(&name, text)?),
                    "steps" => steps = Some(number(&name, text)?),
                    "cfg" => cfg = Some(number(&name, text)?),
                    "eta" => eta = Some(number(&name, text)?),
                    "seconds" => seconds = Some(number(&name, text)?),
                    _ => {
                        format = Some(match text {
                            "wav" => Format::Wav,
                            "mp4" => Format::Mp4,
                            other => return Err(bad(format!("field `format` is `{other}`; expected `wav` or `mp4`"))),
                        })
                    }
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown field `{other}`; the fields are video or features, seed, steps, cfg, eta, seconds, format"
                )));
            }
        }
    }
    let upload = upload.ok_or_else(|| bad("missing the input: give a `video` or a `features` file field"))?;
    let format = format.unwrap_or(Format::Wav);
    if format == Format::Mp4 && !matches!(upload, Upload::Video(_)) {
        return Err(ApiError::new(
            422,
            "invalid_input",
            "format mp4 needs a `video` upload (the audio is muxed into it)",
        ));
    }
    Ok(Form { upload, seed, steps, cfg, eta, seconds, format })
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| bad(format!("field `{name}` is `{text}`: {e}")))
}

impl Form {
    /// The request this form asks for, with `seed` drawn when the form has none
    /// (so that the job's status shows it from the start).
    pub fn request(&self) -> Request {
        let input = match &self.upload {
            Upload::Video(p) => Input::Video(p.clone()),
            Upload::Features(p) => Input::FeaturesFile(p.clone()),
        };
        let mut request = Request::new(input).seed(self.seed.unwrap_or_else(crate::pipeline::random_seed));
        if let Some(steps) = self.steps {
            request = request.steps(steps);
        }
        if let Some(cfg) = self.cfg {
            request = request.cfg_scale(cfg);
        }
        if let Some(eta) = self.eta {
            request = request.eta(eta);
        }
        if let Some(seconds) = self.seconds {
            request = request.seconds(seconds);
        }
        request
    }
}

/// Checks `request` against the model (settings, lengths, the features' shape
/// and values; a video is probed with ffprobe): blocking, run off the async threads.
pub fn validate(request: &Request, config: &LovaConfig, has_clip: bool) -> crate::Result<RequestPlan> {
    if request.input.needs_clip() && !has_clip {
        return Err(crate::Error::InvalidInput(
            "this server's model has no CLIP image tower: upload `features` instead of a video".into(),
        ));
    }
    request.plan(config)
}
