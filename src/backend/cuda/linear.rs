//! `Op::Linear`: a cuBLASLt GEMM with the bias and residual in its epilogue
//! (`gemm`), writing f32 or fp16 (the output tensor's `DType`). An fp16 input
//! (a block activation its producer wrote as fp16) is the GEMM's operand as it
//! is; an f32 input is converted to fp16 first (kernels/convert.cu, one pass
//! into a scratch buffer). The bias goes to `add_bias_rows` (or its fp16-out
//! twin) when cuBLASLt has no algorithm with the bias epilogue.

use cudarc::driver::DevicePtr;

use super::capture;
use super::driver_err;
use super::gemm::GemmArgs;
use super::kernels::{self as k, Ptr};
use super::launch::{Launcher, wrong_op};
use crate::error::{Error, Result};
use crate::graph::{DType, Op, TensorId};

impl Launcher<'_> {
    pub(super) fn linear(&mut self, op: &Op) -> Result<()> {
        let a = self.gemm_args(op, Input::Convert)?;
        if self.backend.gemm.run(&a)?
            && let Some(bias) = a.bias
        {
            let (out, bias, rows, cols) = (Ptr(a.out), Ptr(bias), a.m as i64, a.n as i64);
            match a.out_f16 {
                false => self.elementwise(a.m * a.n, k::AddBiasRows { out, bias, rows, cols })?,
                true => self.elementwise(a.m * a.n, k::AddBiasRowsF16 { out, bias, rows, cols })?,
            }
        }
        Ok(())
    }

    /// Picks the fastest of cuBLASLt's candidate algorithms for this Linear's
    /// GEMM shape, timed on the op's own operands (`Gemm::tune`); `prepare`
    /// calls it once per op, after allocating the fp16 scratch. Values in the
    /// arena do not matter (it holds no input yet): only the time does.
    pub(super) fn tune_linear(&mut self, op: &Op) -> Result<()> {
        let a = self.gemm_args(op, Input::AsScratch)?;
        self.backend.gemm.tune(&a)
    }

    /// The GEMM of a Linear: operand addresses, shape and output type, after
    /// the checks only this backend makes (types, weights' copies).
    fn gemm_args(&mut self, op: &Op, input: Input) -> Result<GemmArgs> {
        let Op::Linear { x, w, bias, residual, out } = op else { return Err(wrong_op(op, "linear")) };
        let (m, k, n) = (self.desc(*x).rows, self.desc(*x).cols, self.desc(*out).cols);
        let name = &self.desc(*out).name;
        if k == 0 {
            return Err(Error::InvalidInput(format!("linear `{name}` has no input features")));
        }
        let out_f16 = match self.dtype(*out) {
            DType::F32 => false,
            DType::F16 => true,
        };
        // cuBLASLt's C has D's type.
        if let Some(r) = residual.filter(|&r| self.dtype(r) != self.dtype(*out)) {
            return Err(self.unsupported_dtype(op, r));
        }
        let w = self.weight_f16(*w, &format!("linear `{name}`: weight"))?;
        let bias = bias.map(|b| self.weight_f32(b, "bias")).transpose()?;
        let half = match (self.dtype(*x), input) {
            (DType::F16, _) => self.ptr(*x),
            (DType::F32, Input::Convert) => self.converted_input(*x, m * k, name)?,
            (DType::F32, Input::AsScratch) => self.scratch(),
        };
        Ok(GemmArgs {
            x: half.0,
            w: w.0,
            bias: bias.map(|p| p.0),
            residual: residual.map(|r| self.ptr(r).0),
            out: self.ptr(*out).0,
            out_f16,
            m,
            n,
            k,
        })
    }

    /// The fp16 GEMM scratch's address (null before `prepare` allocated it).
    fn scratch(&self) -> Ptr {
        Ptr(self.arena.half.as_ref().map(|h| h.device_ptr(&self.backend.stream).0).unwrap_or(0))
    }

    /// The f32 tensor `x` (`len` values) converted to fp16 in the GEMM scratch; its address.
    fn converted_input(&mut self, x: TensorId, len: usize, name: &str) -> Result<Ptr> {
        let b = self.backend;
        if len > 0 && self.arena.half.as_ref().is_none_or(|h| h.len() < len) {
            // `prepare` sizes the scratch to the graph's largest Linear input, so
            // this is reached only by a Linear it did not see; never inside a capture.
            if capture::is_capturing(&b.stream)? {
                return Err(Error::Cuda(format!("linear `{name}` needs a larger fp16 GEMM scratch than was prepared")));
            }
            let buf = b.stream.alloc_zeros::<u16>(len).map_err(driver_err("allocating the fp16 GEMM scratch"))?;
            b.count_allocation();
            self.arena.half = Some(buf);
        }
        let half = self.scratch();
        self.elementwise(len, k::F32ToF16 { x: self.ptr(x), out: half, n: len as i64 })?;
        Ok(half)
    }
}

/// What `gemm_args` does with an f32 input: convert it into the fp16 scratch
/// (a run), or point at the scratch as it is (timing a GEMM in `prepare`).
#[derive(Clone, Copy)]
enum Input {
    Convert,
    AsScratch,
}
