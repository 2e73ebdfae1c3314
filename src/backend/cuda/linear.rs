//! `Op::Linear`: the f32 input converted to fp16 (kernels/convert.cu), then a
//! cuBLASLt GEMM with the bias and residual in its epilogue (`gemm`); the bias
//! by `add_bias_rows` when cuBLASLt has no algorithm with that epilogue.

use cudarc::driver::DevicePtr;

use super::capture;
use super::driver_err;
use super::gemm::GemmArgs;
use super::kernels::{self as k, Ptr};
use super::launch::{Launcher, wrong_op};
use crate::error::{Error, Result};
use crate::graph::Op;

impl Launcher<'_> {
    pub(super) fn linear(&mut self, op: &Op) -> Result<()> {
        let Op::Linear { x, w, bias, residual, out } = op else { return Err(wrong_op(op, "linear")) };
        let (m, k, n) = (self.desc(*x).rows, self.desc(*x).cols, self.desc(*out).cols);
        let name = &self.desc(*out).name;
        if k == 0 {
            return Err(Error::InvalidInput(format!("linear `{name}` has no input features")));
        }
        let w = self.weight_f16(*w, &format!("linear `{name}`: weight"))?;
        let bias = bias.map(|b| self.weight_f32(b, "bias")).transpose()?;
        let b = self.backend;
        if m * k > 0 && self.arena.half.as_ref().is_none_or(|h| h.len() < m * k) {
            // `prepare` sizes the scratch to the graph's largest Linear input, so
            // this is reached only by a Linear it did not see; never inside a capture.
            if capture::is_capturing(&b.stream)? {
                return Err(Error::Cuda(format!("linear `{name}` needs a larger fp16 GEMM scratch than was prepared")));
            }
            let buf = b.stream.alloc_zeros::<u16>(m * k).map_err(driver_err("allocating the fp16 GEMM scratch"))?;
            b.count_allocation();
            self.arena.half = Some(buf);
        }
        let half = Ptr(self.arena.half.as_ref().map(|h| h.device_ptr(&b.stream).0).unwrap_or(0));
        self.elementwise(m * k, k::F32ToF16 { x: self.ptr(*x), out: half, n: (m * k) as i64 })?;
        let unfused_bias = b.gemm.run(&GemmArgs {
            x: half.0,
            w: w.0,
            bias: bias.map(|p| p.0),
            residual: residual.map(|r| self.ptr(r).0),
            out: self.ptr(*out).0,
            m,
            n,
            k,
        })?;
        if unfused_bias && let Some(bias) = bias {
            let kernel = k::AddBiasRows { out: self.ptr(*out), bias, rows: m as i64, cols: n as i64 };
            self.elementwise(m * n, kernel)?;
        }
        Ok(())
    }
}
