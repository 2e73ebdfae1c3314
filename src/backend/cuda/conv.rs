//! Launchers of the VAE decoder's ops (kernels/conv1d.cu): the dilated conv and
//! the transposed conv as one implicit-GEMM kernel on tensor cores, SnakeBeta
//! fused into their input load, and SnakeBeta on its own.

use cudarc::driver::LaunchConfig;

use super::kernels::{self as k, Ptr};
use super::launch::{Launcher, wrong_op};
use crate::error::{Error, Result};
use crate::graph::{Op, SegmentsId, Snake, TensorId, WeightId};

/// Tile of the implicit GEMM (kernels/conv1d.cu: CONV_BM, CONV_BN, CONV_THREADS).
const CONV_BM: usize = 128;
const CONV_BN: usize = 64;
const CONV_THREADS: u32 = 128;

/// One conv launch, in the kernel's terms.
struct ConvLaunch {
    x: TensorId,
    snake: Option<Snake>,
    w: WeightId,
    bias: Option<WeightId>,
    residual: Option<TensorId>,
    out: TensorId,
    /// GEMM rows: output rows (conv) or input rows (transposed conv, per phase).
    m_rows: usize,
    taps: usize,
    dilation: usize,
    padding: usize,
    in_segments: SegmentsId,
    /// Output segments of the transposed conv (None for a conv) and its stride (1 for a conv).
    out_segments: Option<SegmentsId>,
    stride: usize,
}

impl Launcher<'_> {
    pub(super) fn conv1d(&mut self, op: &Op) -> Result<()> {
        let Op::Conv1d { x, input_snake, w, bias, kernel, dilation, padding, residual, segments, out } = op else {
            return Err(wrong_op(op, "conv1d"));
        };
        self.conv(&ConvLaunch {
            x: *x,
            snake: *input_snake,
            w: *w,
            bias: *bias,
            residual: *residual,
            out: *out,
            m_rows: self.graph.seg(*segments).total(),
            taps: *kernel,
            dilation: *dilation,
            padding: *padding,
            in_segments: *segments,
            out_segments: None,
            stride: 1,
        })
    }

    pub(super) fn conv_transpose1d(&mut self, op: &Op) -> Result<()> {
        let Op::ConvTranspose1d { x, input_snake, w, bias, stride, in_segments, out_segments, out } = op else {
            return Err(wrong_op(op, "conv_transpose1d"));
        };
        if *stride < 2 || stride % 2 != 0 {
            return Err(Error::InvalidInput(format!(
                "conv_transpose1d `{}`: stride {stride} is not supported (even strides >= 2)",
                self.desc(*out).name
            )));
        }
        self.conv(&ConvLaunch {
            x: *x,
            snake: *input_snake,
            w: *w,
            bias: *bias,
            residual: None,
            out: *out,
            m_rows: self.graph.seg(*in_segments).total(),
            taps: 2,
            dilation: 0,
            padding: 0,
            in_segments: *in_segments,
            out_segments: Some(*out_segments),
            stride: *stride,
        })
    }

    pub(super) fn snake_beta(&mut self, op: &Op) -> Result<()> {
        let Op::SnakeBeta { x, alpha, beta, out } = op else { return Err(wrong_op(op, "snake_beta")) };
        let (n, cols) = (self.desc(*out).len(), self.desc(*x).cols);
        let kernel = k::SnakeBetaF32 {
            x: self.ptr(*x),
            alpha: self.weight_f32(*alpha, "SnakeBeta alpha")?,
            beta: self.weight_f32(*beta, "SnakeBeta beta")?,
            out: self.ptr(*out),
            n: n as i64,
            cols: cols as i64,
        };
        self.elementwise(n, kernel)
    }

    fn conv(&mut self, c: &ConvLaunch) -> Result<()> {
        let (cin, cout) = (self.desc(c.x).cols, self.desc(c.out).cols);
        let name = &self.desc(c.out).name;
        if cin == 0 || cout == 0 {
            return Err(Error::InvalidInput(format!("conv `{name}` has no input or output channels")));
        }
        let k = c.taps * cin;
        if i32::try_from(c.stride * cout * k).is_err() || i32::try_from(c.m_rows * c.stride).is_err() {
            return Err(Error::Limit(format!("conv `{name}`: a dimension exceeds 2^31")));
        }
        let w = self.weight_f16(c.w, &format!("conv `{name}`: weight"))?;
        let bias = c.bias.map(|b| self.weight_f32(b, "conv bias")).transpose()?.unwrap_or(Ptr::NULL);
        let (snake_alpha, snake_beta) = match c.snake {
            Some(s) => (self.weight_f32(s.alpha, "SnakeBeta alpha")?, self.weight_f32(s.beta, "SnakeBeta beta")?),
            None => (Ptr::NULL, Ptr::NULL),
        };
        if c.m_rows == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (c.m_rows.div_ceil(CONV_BM) as u32, cout.div_ceil(CONV_BN) as u32, c.stride as u32),
            block_dim: (CONV_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        if cfg.grid_dim.1 > 65535 {
            return Err(Error::Limit(format!("conv `{name}`: {cout} output channels exceed the grid")));
        }
        let kernel = k::Conv1dImplicitGemm {
            x: self.ptr(c.x),
            snake_alpha,
            snake_beta,
            w,
            bias,
            residual: c.residual.map(|r| self.ptr(r)).unwrap_or(Ptr::NULL),
            out: self.ptr(c.out),
            m_rows: c.m_rows as i32,
            n: cout as i32,
            cin: cin as i32,
            taps: c.taps as i32,
            dilation: c.dilation as i32,
            pad: c.padding as i32,
            in_offsets: self.offsets(c.in_segments)?,
            count: self.graph.seg(c.in_segments).count() as i32,
            out_offsets: c.out_segments.map(|s| self.offsets(s)).transpose()?.unwrap_or(Ptr::NULL),
            stride: c.stride as i32,
        };
        self.launch(cfg, kernel)
    }
}
