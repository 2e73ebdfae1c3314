//! Launchers of the VAE decoder's ops (kernels/conv1d.cu): the dilated conv and
//! the transposed conv as one implicit-GEMM kernel on tensor cores, SnakeBeta
//! fused into their input load, and SnakeBeta on its own.

use cudarc::driver::DevicePtr;
use cudarc::driver::LaunchConfig;
use cudarc::driver::sys::CUdeviceptr;

use super::{Arg, CudaBackend, OpContext};
use crate::error::{Error, Result};
use crate::graph::{Op, Snake, TensorId, WeightId};

/// Tile of the implicit GEMM (kernels/conv1d.cu: CONV_BM, CONV_BN, CONV_THREADS).
const CONV_BM: usize = 128;
const CONV_BN: usize = 64;
const CONV_THREADS: u32 = 128;

/// One conv launch, in the kernel's terms.
struct ConvLaunch {
    x: TensorId,
    snake: Option<Snake>,
    w: WeightId,
    w_len: usize,
    bias: Option<WeightId>,
    residual: Option<TensorId>,
    out: TensorId,
    /// GEMM rows: output rows (conv) or input rows (transposed conv, per phase).
    m_rows: usize,
    cin: usize,
    cout: usize,
    taps: usize,
    dilation: usize,
    padding: usize,
    in_offsets: CUdeviceptr,
    count: usize,
    /// Output offsets and stride of the transposed conv (0 and 1 for a conv).
    out_offsets: CUdeviceptr,
    stride: usize,
}

impl CudaBackend {
    /// Runs `Op::Conv1d`, `Op::ConvTranspose1d` or `Op::SnakeBeta`.
    pub(super) fn run_conv_op(
        &self,
        op: &Op,
        ctx: &mut OpContext<'_, Self>,
        ptr: &dyn Fn(TensorId) -> CUdeviceptr,
    ) -> Result<()> {
        let g = ctx.graph;
        match op {
            Op::Conv1d { x, input_snake, w, bias, kernel, dilation, padding, residual, segments, out } => {
                let seg = g.seg(*segments);
                let (cin, cout, name) = (g.desc(*x).cols, g.desc(*out).cols, &g.desc(*out).name);
                if g.desc(*x).rows != seg.total() || g.desc(*out).rows != seg.total() {
                    return Err(Error::InvalidInput(format!("conv1d `{name}`: rows differ from its sequences")));
                }
                if *kernel == 0 || 2 * padding != dilation * (kernel - 1) {
                    return Err(Error::InvalidInput(format!(
                        "conv1d `{name}`: kernel {kernel}, dilation {dilation}, padding {padding} do not keep the length"
                    )));
                }
                if let Some(r) = residual
                    && (g.desc(*r).rows, g.desc(*r).cols) != (seg.total(), cout)
                {
                    return Err(Error::InvalidInput(format!("conv1d `{name}`: the residual has another shape")));
                }
                let in_offsets = self.offsets(ctx.arena, seg)?;
                self.launch_conv(
                    ctx,
                    ptr,
                    &ConvLaunch {
                        x: *x,
                        snake: *input_snake,
                        w: *w,
                        w_len: cout * kernel * cin,
                        bias: *bias,
                        residual: *residual,
                        out: *out,
                        m_rows: seg.total(),
                        cin,
                        cout,
                        taps: *kernel,
                        dilation: *dilation,
                        padding: *padding,
                        in_offsets,
                        count: seg.count(),
                        out_offsets: 0,
                        stride: 1,
                    },
                )
            }
            Op::ConvTranspose1d { x, input_snake, w, bias, stride, in_segments, out_segments, out } => {
                let (si, so) = (g.seg(*in_segments), g.seg(*out_segments));
                let (cin, cout, name) = (g.desc(*x).cols, g.desc(*out).cols, &g.desc(*out).name);
                if *stride < 2 || stride % 2 != 0 {
                    return Err(Error::InvalidInput(format!(
                        "conv_transpose1d `{name}`: stride {stride} is not supported (even strides >= 2)"
                    )));
                }
                if si.count() != so.count()
                    || si.lengths().zip(so.lengths()).any(|(i, o)| o != i * stride)
                    || g.desc(*x).rows != si.total()
                    || g.desc(*out).rows != so.total()
                {
                    return Err(Error::InvalidInput(format!(
                        "conv_transpose1d `{name}`: output sequences must be {stride} times the input's"
                    )));
                }
                let in_offsets = self.offsets(ctx.arena, si)?;
                let out_offsets = self.offsets(ctx.arena, so)?;
                self.launch_conv(
                    ctx,
                    ptr,
                    &ConvLaunch {
                        x: *x,
                        snake: *input_snake,
                        w: *w,
                        w_len: stride * cout * 2 * cin,
                        bias: *bias,
                        residual: None,
                        out: *out,
                        m_rows: si.total(),
                        cin,
                        cout,
                        taps: 2,
                        dilation: 0,
                        padding: 0,
                        in_offsets,
                        count: si.count(),
                        out_offsets,
                        stride: *stride,
                    },
                )
            }
            Op::SnakeBeta { x, alpha, beta, out } => {
                let c = g.desc(*x).cols;
                let a = self.weight_f32(ctx.weights, *alpha, c, "SnakeBeta alpha")?;
                let b = self.weight_f32(ctx.weights, *beta, c, "SnakeBeta beta")?;
                let n = g.desc(*out).len();
                // snake_beta_f32(x, alpha, beta, out, n, cols)
                self.launch_elementwise(
                    "snake_beta_f32",
                    n,
                    &[
                        Arg::Ptr(ptr(*x)),
                        Arg::Ptr(a),
                        Arg::Ptr(b),
                        Arg::Ptr(ptr(*out)),
                        Arg::I64(n as i64),
                        Arg::I64(c as i64),
                    ],
                )
            }
            other => Err(Error::UnsupportedOp { backend: "CUDA", op: other.name() }),
        }
    }

    fn launch_conv(
        &self,
        ctx: &mut OpContext<'_, Self>,
        ptr: &dyn Fn(TensorId) -> CUdeviceptr,
        c: &ConvLaunch,
    ) -> Result<()> {
        let name = &ctx.graph.desc(c.out).name;
        if c.cin == 0 || c.cout == 0 {
            return Err(Error::InvalidInput(format!("conv `{name}` has no input or output channels")));
        }
        let k = c.taps * c.cin;
        if i32::try_from(c.stride * c.cout * k).is_err() || i32::try_from(c.m_rows * c.stride).is_err() {
            return Err(Error::Limit(format!("conv `{name}`: a dimension exceeds 2^31")));
        }
        let weight = self.weight(ctx.weights, c.w)?;
        let Some(wdata) = &weight.f16 else {
            return Err(Error::InvalidInput(format!(
                "conv `{name}`: weight {:?} is a vector, expected a matrix stored as fp16",
                weight.shape
            )));
        };
        if weight.len() != c.w_len {
            return Err(Error::InvalidInput(format!(
                "conv `{name}`: weight {:?} has {} values, the conv needs {}",
                weight.shape,
                weight.len(),
                c.w_len
            )));
        }
        let bias = c.bias.map(|b| self.weight_f32(ctx.weights, b, c.cout, "conv bias")).transpose()?.unwrap_or(0);
        let (alpha, beta) = match c.snake {
            Some(s) => (
                self.weight_f32(ctx.weights, s.alpha, c.cin, "SnakeBeta alpha")?,
                self.weight_f32(ctx.weights, s.beta, c.cin, "SnakeBeta beta")?,
            ),
            None => (0, 0),
        };
        if c.m_rows == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (c.m_rows.div_ceil(CONV_BM) as u32, c.cout.div_ceil(CONV_BN) as u32, c.stride as u32),
            block_dim: (CONV_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        if cfg.grid_dim.1 > 65535 {
            return Err(Error::Limit(format!("conv `{name}`: {} output channels exceed the grid", c.cout)));
        }
        // conv1d_implicit_gemm(x, snake_alpha, snake_beta, w, bias, residual, out, m_rows, n, cin,
        //                      taps, dilation, pad, in_offsets, count, out_offsets, stride)
        self.launch(
            "conv1d_implicit_gemm",
            cfg,
            &[
                Arg::Ptr(ptr(c.x)),
                Arg::Ptr(alpha),
                Arg::Ptr(beta),
                Arg::Ptr(wdata.device_ptr(&self.stream).0),
                Arg::Ptr(bias),
                Arg::Ptr(c.residual.map(ptr).unwrap_or(0)),
                Arg::Ptr(ptr(c.out)),
                Arg::I32(c.m_rows as i32),
                Arg::I32(c.cout as i32),
                Arg::I32(c.cin as i32),
                Arg::I32(c.taps as i32),
                Arg::I32(c.dilation as i32),
                Arg::I32(c.padding as i32),
                Arg::Ptr(c.in_offsets),
                Arg::I32(c.count as i32),
                Arg::Ptr(c.out_offsets),
                Arg::I32(c.stride as i32),
            ],
        )
    }
}
