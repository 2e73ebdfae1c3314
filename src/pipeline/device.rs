//! The device a pipeline runs on, chosen at run time: one enum over the
//! backends, so that callers never name a backend type.

use crate::backend::cpu::Precision;
use crate::backend::{Backend, CpuBackend, CudaBackend};
use crate::error::{Error, Result};

/// Where CLIP, the DiT with the sampler, and the VAE run (all three on one device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA GPU 0 when the driver, NVRTC, cuBLASLt and a GPU are usable, else
    /// the CPU; the reason for falling back is kept (`Pipeline::device_note`).
    #[default]
    Auto,
    /// The CPU (f32 reference backend).
    Cpu,
    /// The CUDA GPU with this ordinal; an error when CUDA is not usable.
    Cuda(usize),
}

/// A backend picked at run time.
pub enum AnyBackend {
    /// The f32 CPU reference backend.
    Cpu(CpuBackend),
    /// A CUDA GPU (boxed: the backend is large).
    Cuda(Box<CudaBackend>),
}

/// Work that runs on whichever backend a `Device` gave (generic code cannot
/// return either of two backend types, so `AnyBackend::run` calls back).
pub trait WithBackend {
    /// What the job returns.
    type Output;
    /// Runs the job on `backend`, which it takes ownership of.
    fn run<B: Backend>(self, backend: B) -> Result<Self::Output>;
}

impl AnyBackend {
    /// Starts the backend `device` asks for, the CPU one computing in
    /// `precision` (`Precision::Bf16` asks for the CPU: CUDA runs fp16 weights).
    /// The second value says why `Auto` fell back to the CPU (None when it did not).
    pub fn open(device: Device, precision: Precision) -> Result<(AnyBackend, Option<String>)> {
        let cpu = || AnyBackend::Cpu(CpuBackend::with_precision(precision));
        let bf16_on_cuda = || {
            Error::InvalidInput(
                "bf16 precision is for the CPU backend (CUDA runs fp16 weights): choose the CPU device".into(),
            )
        };
        Ok(match device {
            Device::Cpu => (cpu(), None),
            Device::Cuda(_) if precision == Precision::Bf16 => return Err(bf16_on_cuda()),
            Device::Cuda(ordinal) => (AnyBackend::Cuda(Box::new(CudaBackend::new(ordinal)?)), None),
            Device::Auto => match CudaBackend::new(0) {
                Ok(_) if precision == Precision::Bf16 => return Err(bf16_on_cuda()),
                Ok(cuda) => (AnyBackend::Cuda(Box::new(cuda)), None),
                Err(e) => (cpu(), Some(format!("running on the CPU; CUDA is not usable: {e}"))),
            },
        })
    }

    /// Runs `job` on this backend.
    pub fn run<J: WithBackend>(self, job: J) -> Result<J::Output> {
        match self {
            AnyBackend::Cpu(b) => job.run(b),
            AnyBackend::Cuda(b) => job.run(*b),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;

    /// `auto`, `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                text.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda).ok_or_else(|| {
                    Error::InvalidInput(format!("unknown device `{text}`: use auto, cpu, cuda or cuda:N"))
                })
            }
        }
    }
}
