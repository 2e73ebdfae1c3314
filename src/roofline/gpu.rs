//! The two peaks of a roofline: dense fp16 tensor-core FLOP/s and memory
//! bandwidth, for the GPUs the project measures on, or given by hand.
//!
//! Figures are NVIDIA's data-sheet numbers. The data sheets quote fp16
//! tensor-core throughput *with* 2:4 sparsity; the dense figure, the one a
//! plain GEMM can reach, is half of it (H100 SXM: 1,979 -> 989.4 TFLOP/s).
//! tools/device-check.sh uses the same dense figures.

use crate::error::{Error, Result};

/// A GPU's peaks, as a roofline needs them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Gpu {
    /// Name for reports (`H100 SXM`, or `custom`).
    pub name: String,
    /// Dense fp16 tensor-core peak (fp32 accumulation), TFLOP/s.
    pub tensor_tflops: f64,
    /// Memory (HBM) bandwidth, GB/s (10^9 bytes per second).
    pub bandwidth_gbps: f64,
    /// Where the figures come from.
    pub source: String,
}

/// The data-sheet source of the named GPUs' figures.
const DATASHEET: &str = "NVIDIA data sheet: fp16 tensor core 1,979 TFLOP/s with sparsity, halved for dense";

impl Gpu {
    /// H100 SXM5 80 GB: 989 TFLOP/s dense fp16, HBM3 3.35 TB/s.
    pub fn h100() -> Gpu {
        Gpu { name: "H100 SXM".into(), tensor_tflops: 989.0, bandwidth_gbps: 3350.0, source: DATASHEET.into() }
    }

    /// H200 SXM 141 GB: the H100's GH100 die (989 TFLOP/s dense fp16) with HBM3e at 4.8 TB/s.
    pub fn h200() -> Gpu {
        Gpu { name: "H200 SXM".into(), tensor_tflops: 989.0, bandwidth_gbps: 4800.0, source: DATASHEET.into() }
    }

    /// `h100`, `h200` (any case), or `TFLOPS,GBPS` (dense fp16 TFLOP/s, then GB/s).
    pub fn parse(text: &str) -> Result<Gpu> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "h100" => return Ok(Gpu::h100()),
            "h200" => return Ok(Gpu::h200()),
            _ => {}
        }
        let bad = || {
            Error::InvalidInput(format!(
                "--gpu {t:?}: expected h100, h200, or TFLOPS,GBPS (dense fp16 tensor-core TFLOP/s and memory \
                 GB/s, both positive, e.g. 989,3350)"
            ))
        };
        let (flops, bandwidth) = t.split_once(',').ok_or_else(bad)?;
        let number = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0);
        match (number(flops), number(bandwidth)) {
            (Some(tensor_tflops), Some(bandwidth_gbps)) => {
                Ok(Gpu { name: "custom".into(), tensor_tflops, bandwidth_gbps, source: "given with --gpu".into() })
            }
            _ => Err(bad()),
        }
    }

    /// Peak FLOP per second.
    pub fn flops_per_s(&self) -> f64 {
        self.tensor_tflops * 1e12
    }

    /// Peak bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bandwidth_gbps * 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_custom_gpus_parse_and_nonsense_is_refused() {
        assert_eq!(Gpu::parse("H100").unwrap(), Gpu::h100());
        assert_eq!(Gpu::parse(" h200 ").unwrap().bandwidth_gbps, 4800.0);
        let g = Gpu::parse("500, 2000").unwrap();
        assert_eq!((g.tensor_tflops, g.bandwidth_gbps, g.name.as_str()), (500.0, 2000.0, "custom"));
        for bad in ["a100", "", "500", "500,", "0,100", "100,-1", "nan,5", "inf,5", "1,2,3"] {
            let e = Gpu::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--gpu") && e.contains("h100"), "{bad}: {e}");
        }
    }
}
