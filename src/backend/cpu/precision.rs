//! Which arithmetic the CPU backend runs its matrix products in, and which
//! instruction set the bf16 kernels use on this CPU (detected at run time).
//!
//! Only paths that were run and tested on a development machine are
//! dispatched to: AVX-512F, AVX2 + FMA and plain Rust. AMX and AVX-512-BF16
//! (`vdpbf16ps`) kernels do not exist yet: a CPU that has them takes the
//! AVX-512F path, which widens bf16 weights to f32 and multiplies in f32.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// What the user asks for (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and arithmetic everywhere: the reference, bit for bit what
    /// the CPU backend always computed.
    #[default]
    F32,
    /// Linear and convolution weights rounded to bf16 once and packed for the
    /// microkernel, and attention's softmax with a polynomial exp (within 2 ulp);
    /// activations, accumulation and every other op in f32.
    Bf16,
    /// bf16 where this CPU has a SIMD kernel for it (AVX-512F, or AVX2 + FMA), else f32.
    Auto,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "auto" => Ok(Precision::Auto),
            _ => Err(Error::InvalidInput(format!("unknown precision `{s}` (expected f32, bf16 or auto)"))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        })
    }
}

/// The instruction set of the bf16 GEMM microkernel. Every variant computes
/// each output element with the same sequence of f32 FMAs, so all of them give
/// the same bits (tested): the choice changes speed only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 12 rows x 32 columns per tile in 24 zmm accumulators.
    Avx512,
    /// 4 rows x 16 columns per tile in 8 ymm accumulators.
    Avx2Fma,
    /// Plain Rust (`f32::mul_add`): any CPU, slow; the portable fallback.
    Scalar,
}

impl Isa {
    /// The fastest kernel this CPU can run.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Scalar
    }

    /// Every kernel this CPU can run, fastest first (the tests run each).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Avx512, Isa::Avx2Fma, Isa::Scalar]
            .into_iter()
            .filter(|isa| match (best, isa) {
                (Isa::Avx512, _) => true,
                (Isa::Avx2Fma, Isa::Avx512) => false,
                (Isa::Avx2Fma, _) => true,
                (Isa::Scalar, isa) => *isa == Isa::Scalar,
            })
            .collect()
    }

    /// Whether this CPU can run the kernel (asking for one it cannot is an error, not a crash).
    pub fn supported(self) -> bool {
        Isa::available().contains(&self)
    }

    /// Short name for reports and messages (`avx512f`, `avx2+fma`, `scalar`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Scalar => "scalar",
        }
    }
}

/// What the CPU backend actually runs: f32, or bf16 weights with one kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Everything in f32 (the reference).
    F32,
    /// Linear weights in bf16, run by the kernel for this instruction set.
    Bf16(Isa),
}

impl Precision {
    /// `Auto` becomes bf16 only with a SIMD kernel: the scalar bf16 kernel is
    /// slower than the f32 path, so it is taken only when asked for by name.
    pub fn resolve(self) -> Resolved {
        match (self, Isa::detect()) {
            (Precision::F32, _) => Resolved::F32,
            (Precision::Bf16, isa) => Resolved::Bf16(isa),
            (Precision::Auto, Isa::Scalar) => Resolved::F32,
            (Precision::Auto, isa) => Resolved::Bf16(isa),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_precision() {
        for p in [Precision::F32, Precision::Bf16, Precision::Auto] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp8".parse::<Precision>().is_err());
    }

    #[test]
    fn detection_is_consistent() {
        let all = Isa::available();
        assert_eq!(all[0], Isa::detect());
        assert_eq!(*all.last().unwrap(), Isa::Scalar);
        assert_eq!(Precision::F32.resolve(), Resolved::F32);
        assert_eq!(Precision::Bf16.resolve(), Resolved::Bf16(Isa::detect()));
        eprintln!("bf16 kernels this CPU runs: {:?}", all);
    }
}
