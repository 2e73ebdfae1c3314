//! The library's error type. Every message names the thing that is wrong (file,
//! checkpoint key, config field, limit) so that a user can act on it without a
//! debugger; the CLI adds context with `anyhow` on top.

use std::path::PathBuf;

/// `Result` with the library's `Error` as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the library reports; each message names the offending file, key, field or limit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS reason is part of the message and deliberately not a `#[source]`:
    /// a CLI printing the chain (`{:#}`) would print it twice otherwise.
    /// A file-system operation (`op`) on `path` failed.
    #[error("cannot {op} {path}: {reason}")]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or folder, as the user named it.
        path: PathBuf,
        /// The OS error.
        reason: std::io::Error,
    },

    /// A weights file is not a readable safetensors file (bad header, offsets or size).
    #[error("{path} is not a valid safetensors file: {reason}")]
    BadSafetensors {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A config file or string could not be read or parsed.
    #[error("config {path}: {reason}")]
    Config {
        /// Where: the config file and/or the field (`file: field`).
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A config field holds a value outside what lova-fast supports; `supported` says what is.
    #[error("config field `{field}` has value {value}, which lova-fast does not support ({supported})")]
    UnsupportedConfig {
        /// The config field.
        field: String,
        /// Its value in the config.
        value: String,
        /// What lova-fast supports there.
        supported: String,
    },

    /// A checkpoint lacks a tensor the model needs.
    #[error("tensor `{key}` is missing from {file}")]
    MissingTensor {
        /// The checkpoint key.
        key: String,
        /// The checkpoint it was looked up in.
        file: String,
    },

    /// A checkpoint tensor has a different shape than the config implies.
    #[error("tensor `{key}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint key.
        key: String,
        /// The checkpoint.
        file: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape stored in the file.
        found: Vec<usize>,
    },

    /// A checkpoint tensor is stored in a dtype other than F32, F16 or BF16.
    #[error("tensor `{key}` in {file} has dtype {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype {
        /// The checkpoint key.
        key: String,
        /// The checkpoint.
        file: String,
        /// The stored dtype.
        dtype: String,
    },

    /// A tensor (weights, input or output) holds NaN or infinity at `index`.
    #[error("{what} contains a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// The tensor checked.
        what: String,
        /// Flat index of the first non-finite element.
        index: usize,
        /// That element.
        value: f32,
    },

    /// A value is finite but beyond the magnitude `max` accepted at that point.
    #[error("{what} holds {value:e} at index {index}, beyond the ±{max:e} lova-fast accepts there")]
    OutOfRange {
        /// The tensor checked.
        what: String,
        /// Flat index of the first element out of range.
        index: usize,
        /// That element.
        value: f32,
        /// Largest magnitude accepted there.
        max: f32,
    },

    /// A size or count exceeds a documented limit; the message names it.
    #[error("{0}")]
    Limit(String),

    /// A caller-supplied argument or request is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The CUDA backend could not start or a CUDA call failed.
    #[error("CUDA: {0}")]
    Cuda(String),

    /// A backend was given an op it does not implement (yet).
    #[error("the {backend} backend does not implement op `{op}`")]
    UnsupportedOp {
        /// The backend's name.
        backend: &'static str,
        /// The op's name.
        op: &'static str,
    },

    /// A weight could not be read or put on the device (`key` names it).
    #[error("weight `{key}`: {source}")]
    Upload {
        /// The checkpoint key of the weight.
        key: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },

    /// The request was cancelled (its `CancelToken`) before it finished.
    #[error("cancelled")]
    Cancelled,

    /// A request sampled in one batch with others shares the batch's failure.
    #[error("the sampler batch this request was part of failed: {0}")]
    Batch(String),

    /// A video input (`path`) could not be read, decoded or written.
    #[error("{path}: {reason}")]
    Video {
        /// The video file or image folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    #[error(
        "`{tool}` was not found on PATH: lova-fast reads video through FFmpeg. Install it with \
         `sudo apt-get install ffmpeg` (Debian/Ubuntu), `brew install ffmpeg` (macOS) or from \
         https://ffmpeg.org/download.html, and make sure `{tool}` is on PATH"
    )]
    /// An external tool (`ffmpeg`/`ffprobe`) is not on PATH.
    ToolMissing {
        /// The executable's name (`ffmpeg` or `ffprobe`).
        tool: &'static str,
    },
}

impl Error {
    /// Builds an `Error::Video` for `path`.
    pub fn video(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Video { path: path.into(), reason: reason.into() }
    }

    /// `source`, naming the weight `key` it happened to, unless it names it already.
    pub fn upload(key: &str, source: Error) -> Self {
        match source {
            Error::MissingTensor { .. } | Error::ShapeMismatch { .. } | Error::UnsupportedDtype { .. } => source,
            other => Error::Upload { key: key.to_string(), source: Box::new(other) },
        }
    }

    /// Reading `path` failed (opening it for reading included).
    pub fn io(path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        Error::Io { op: IoOp::Read, path: path.into(), reason }
    }

    /// Writing `path` failed: its temporary file could not be created or
    /// written, or it could not be moved into place. `path` is the file the
    /// user named, never the temporary name.
    pub fn write(path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        Error::Io { op: IoOp::Write, path: path.into(), reason }
    }

    /// Listing the folder `path` failed.
    pub fn list(path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        Error::Io { op: IoOp::List, path: path.into(), reason }
    }
}

/// What an I/O error was doing, for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Reading a file.
    Read,
    /// Creating, writing or renaming a file.
    Write,
    /// Listing a folder.
    List,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::List => "list the folder",
        })
    }
}

/// Refuses NaN and infinities with an error that says where the first one is.
pub fn ensure_finite(what: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite { what: what.to_string(), index, value: data[index] }),
    }
}

/// Refuses NaN, infinities and magnitudes above `max_abs` (values that are
/// finite but would overflow what is computed from them), naming the first.
pub fn ensure_within(what: &str, data: &[f32], max_abs: f32) -> Result<()> {
    ensure_finite(what, data)?;
    match data.iter().position(|v| v.abs() > max_abs) {
        None => Ok(()),
        Some(index) => Err(Error::OutOfRange { what: what.to_string(), index, value: data[index], max: max_abs }),
    }
}
