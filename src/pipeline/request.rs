//! What one generation asks for: an input and its settings (the paper's by default).

use std::path::{Path, PathBuf};

use super::progress::CancelToken;
use crate::config::LovaConfig;
use crate::error::{Error, Result, ensure_finite};
use crate::sampler::SamplerSettings;
use crate::tensor::HostTensor;
use crate::video::{RgbImage, VideoReader};
use crate::weights::read_features;

/// Where a request's video comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A video file (anything FFmpeg decodes).
    Video(PathBuf),
    /// A folder of PNG/JPEG frames, in name order, at `fps` frames per second.
    ImageFolder {
        /// Folder holding the frame images.
        dir: PathBuf,
        /// Frame rate of the images, frames per second.
        fps: f64,
    },
    /// Decoded RGB frames (any size, all the same) at `fps` frames per second.
    Frames {
        /// The frames, in time order.
        frames: Vec<RgbImage>,
        /// Frame rate, frames per second.
        fps: f64,
    },
    /// CLIP features `[N, cond_token_dim]` of frames sampled at `fps` (None: the
    /// request's `sample_fps`, else the model's 8 fps).
    Features {
        /// CLIP features `[N, cond_token_dim]`, one row per sampled frame.
        features: HostTensor,
        /// Rate the frames were sampled at, frames per second.
        fps: Option<f64>,
    },
    /// A safetensors file with one tensor `features` `[N, cond_token_dim]`
    /// (as `lova-fast infer --save-features` writes), frames as for `Features`.
    FeaturesFile(PathBuf),
}

impl Input {
    /// A name for messages and reports: the path, or what the input is.
    pub fn describe(&self) -> String {
        match self {
            Input::Video(p) | Input::FeaturesFile(p) | Input::ImageFolder { dir: p, .. } => p.display().to_string(),
            Input::Frames { frames, .. } => format!("{} frames in memory", frames.len()),
            Input::Features { features, .. } => format!("features {:?} in memory", features.shape),
        }
    }

    /// The file or folder the input reads, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Input::Video(p) | Input::FeaturesFile(p) | Input::ImageFolder { dir: p, .. } => Some(p),
            Input::Frames { .. } | Input::Features { .. } => None,
        }
    }

    /// Whether the input goes through CLIP (and so needs its weights).
    pub fn needs_clip(&self) -> bool {
        !matches!(self, Input::Features { .. } | Input::FeaturesFile(_))
    }
}

/// One clip to generate. `Request::new(input)` has the paper's settings:
/// 150 steps of DPM++ 3M SDE (eta 1) from sigma 500 to 0.3, CFG 5, frames
/// sampled at the model's 8 fps, audio exactly as long as the video.
#[derive(Debug, Clone)]
pub struct Request {
    /// The video (or frames, or features) to make audio for.
    pub input: Input,
    /// Seed of the noise generator (None: a random one, reported in the output).
    pub seed: Option<u64>,
    /// Steps, noise schedule and DPM++ settings. Requests sampled together in
    /// one batch share these; `generate_many` batches requests with equal ones.
    pub sampler: SamplerSettings,
    /// Classifier-free guidance scale (1: no guidance).
    pub cfg_scale: f32,
    /// Audio length in seconds (None: the video's duration, N / fps for features).
    pub seconds: Option<f64>,
    /// Rate video frames are sampled at (None: the model's; other rates change
    /// what the DiT sees). For features inputs: the rate they were sampled at.
    pub sample_fps: Option<f64>,
    /// Start from this noise `[io_channels, T']` instead of the seeded generator's.
    pub initial_noise: Option<HostTensor>,
    /// Checked between CLIP batches, sampler steps and VAE windows.
    pub cancel: Option<CancelToken>,
}

impl Request {
    /// A request for `input` with the paper's settings (see the type doc).
    pub fn new(input: Input) -> Self {
        Request {
            input,
            seed: None,
            sampler: SamplerSettings::default(),
            cfg_scale: 5.0,
            seconds: None,
            sample_fps: None,
            initial_noise: None,
            cancel: None,
        }
    }

    /// Sets the noise seed (default: a random seed, reported in the output).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the number of sampler steps (default 150).
    pub fn steps(mut self, steps: usize) -> Self {
        self.sampler.steps = steps;
        self
    }

    /// Sets the classifier-free guidance scale (default 5).
    pub fn cfg_scale(mut self, cfg_scale: f32) -> Self {
        self.cfg_scale = cfg_scale;
        self
    }

    /// Sets the SDE noise amount eta (default 1; 0: no noise added after the initial noise).
    pub fn eta(mut self, eta: f64) -> Self {
        self.sampler.eta = eta;
        self
    }

    /// Sets the audio length in seconds instead of the video's duration.
    pub fn seconds(mut self, seconds: f64) -> Self {
        self.seconds = Some(seconds);
        self
    }

    /// Sets the rate video frames are sampled at (or the features' rate).
    pub fn sample_fps(mut self, fps: f64) -> Self {
        self.sample_fps = Some(fps);
        self
    }

    /// Attaches a token that cancels this request when `cancel` is called on it.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }

    /// Checks the settings (not the input).
    pub fn validate_settings(&self) -> Result<()> {
        self.sampler.validate()?;
        crate::sampler::check_cfg_scale(self.cfg_scale)?;
        if let Some(s) = self.seconds
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::InvalidInput(format!("the audio length must be a positive number of seconds, got {s}")));
        }
        for (what, value) in [("the sample fps", self.sample_fps), ("the frame rate", self.input_fps())] {
            if let Some(f) = value {
                crate::config::check_frame_rate(what, f)?;
            }
        }
        Ok(())
    }

    fn input_fps(&self) -> Option<f64> {
        match &self.input {
            Input::ImageFolder { fps, .. } | Input::Frames { fps, .. } => Some(*fps),
            Input::Features { fps, .. } => *fps,
            Input::Video(_) | Input::FeaturesFile(_) => None,
        }
    }

    /// Checks the request against `config` and measures it, without decoding
    /// any frame (a video is probed): what a caller may do before loading the
    /// model, to refuse bad input early. `generate` does the same again.
    pub fn plan(&self, config: &LovaConfig) -> Result<RequestPlan> {
        Ok(self.open(config)?.plan)
    }

    /// Opens the input: a video reader (frames to decode) or the features.
    pub(crate) fn open(&self, config: &LovaConfig) -> Result<OpenedInput> {
        self.validate_settings()?;
        let sample_fps = self.sample_fps.unwrap_or(config.fps);
        let features_at = |features: HostTensor, what: &str, fps: Option<f64>| -> Result<(Source, f64)> {
            let cd = config.dit.cond_token_dim;
            if features.shape.len() != 2 || features.shape[1] != cd {
                return Err(Error::InvalidInput(format!(
                    "{what}: features have shape {:?}, expected [N, {cd}]",
                    features.shape
                )));
            }
            ensure_finite(&format!("features in {what}"), &features.data)?;
            let duration = features.shape[0] as f64 / fps.unwrap_or(sample_fps);
            Ok((Source::Features(features), duration))
        };
        let (source, duration) = match &self.input {
            Input::Video(path) => {
                let reader = VideoReader::open_video(path, sample_fps)?;
                let duration = reader.duration;
                (Source::Frames(Box::new(reader)), duration)
            }
            Input::ImageFolder { dir, fps } => {
                let reader = VideoReader::open_images(dir, *fps, sample_fps)?;
                let duration = reader.duration;
                (Source::Frames(Box::new(reader)), duration)
            }
            Input::Frames { frames, fps } => {
                let reader = VideoReader::from_frames("frames in memory", frames.clone(), *fps, sample_fps)?;
                let duration = reader.duration;
                (Source::Frames(Box::new(reader)), duration)
            }
            Input::Features { features, fps } => features_at(features.clone(), "the request", *fps)?,
            Input::FeaturesFile(path) => {
                let features = read_features(path, config.dit.cond_token_dim)?;
                features_at(features, &path.display().to_string(), None)?
            }
        };
        let frames = match &source {
            Source::Frames(reader) => reader.frames(),
            Source::Features(f) => f.shape[0],
        };
        let seconds = self.seconds.unwrap_or(duration);
        config.check_seconds("the audio length", seconds)?;
        let latent_len = config.latent_len_for_seconds(seconds);
        config.check_lengths(latent_len, frames)?;
        if let Some(noise) = &self.initial_noise {
            if noise.shape != [config.dit.io_channels, latent_len] {
                return Err(Error::InvalidInput(format!(
                    "the initial noise has shape {:?}, expected [{}, {latent_len}] for a {seconds:.3} s clip",
                    noise.shape, config.dit.io_channels
                )));
            }
            ensure_finite("the initial noise", &noise.data)?;
        }
        Ok(OpenedInput { source, plan: RequestPlan { frames, seconds, latent_len } })
    }
}

/// A request measured: what it will make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestPlan {
    /// N, the video frames (at the sample rate) CLIP encodes, or the features' rows.
    pub frames: usize,
    /// Audio length D in seconds.
    pub seconds: f64,
    /// T' = ceil(D * sample_rate / downsampling_ratio), the latent frames sampled.
    pub latent_len: usize,
}

/// Frames to encode, or features ready.
pub(crate) enum Source {
    Frames(Box<VideoReader>),
    Features(HostTensor),
}

pub(crate) struct OpenedInput {
    pub source: Source,
    pub plan: RequestPlan,
}
