//! Sampling (lova-model.md section 5): the schedule, the v-denoiser, CFG and
//! DPM++ 3M SDE, run as one graph per step over a batch of requests.

pub mod dpmpp;
pub mod rng;
pub mod schedule;
mod session;

pub use session::{
    MAX_CFG, MAX_ETA, MAX_S_NOISE, Request, RequestNoise, SIGMA_RANGE, SamplerSettings, Sampling, check_cfg_scale,
    sample,
};
