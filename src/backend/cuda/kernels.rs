//! Every kernel of kernels/*.cu as a Rust type: its name and its parameters,
//! in order, with their types, declared once here. A launch builds the
//! kernel's struct by field name, so a missing, misordered or mistyped
//! argument does not compile; tests/kernel_launches.rs checks each
//! declaration against the `extern "C" __global__` signature in kernels/, and
//! `CudaBackend::launch` checks the argument sizes against the cubin
//! (`cuFuncGetParamInfo`) where the driver can tell.

use cudarc::driver::sys::CUdeviceptr;

/// A device address passed to a kernel (a pointer parameter). A type of its
/// own so that an address cannot be passed where a `long long` is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ptr(pub CUdeviceptr);

impl Ptr {
    /// The null pointer, for optional operands the kernel skips.
    pub const NULL: Ptr = Ptr(0);

    /// `self` advanced by `floats` f32 values.
    pub fn add_f32(self, floats: usize) -> Ptr {
        self.add_bytes(floats * std::mem::size_of::<f32>())
    }

    /// `self` advanced by `bytes` bytes.
    pub fn add_bytes(self, bytes: usize) -> Ptr {
        Ptr(self.0 + bytes as CUdeviceptr)
    }
}

/// One kernel argument as the driver copies it.
#[derive(Clone, Copy)]
pub enum Arg {
    /// A pointer parameter (a 64-bit device address).
    Ptr(CUdeviceptr),
    /// `int`.
    I32(i32),
    /// `unsigned`.
    U32(u32),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
}

impl Arg {
    /// Bytes the driver copies for this argument.
    pub fn size(&self) -> usize {
        match self {
            Arg::Ptr(_) | Arg::I64(_) => 8,
            Arg::I32(_) | Arg::U32(_) | Arg::F32(_) => 4,
        }
    }
}

impl From<Ptr> for Arg {
    fn from(p: Ptr) -> Arg {
        Arg::Ptr(p.0)
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I64(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}

/// A kernel and its arguments, ready to launch (`CudaBackend::launch`).
pub trait Kernel {
    /// The `extern "C"` name in kernels/*.cu.
    const NAME: &'static str;
    /// The arguments in the kernel's parameter order.
    fn args(&self) -> Vec<Arg>;
}

/// `Name = "kernel_name" (file.cu) { param: Type, ... }`: a struct whose
/// fields are the kernel's parameters in order (Ptr, i32, u32, i64, f32 for
/// pointers, int, unsigned, long long, float).
macro_rules! kernels {
    ($($(#[$doc:meta])* $ty:ident = $name:literal { $($field:ident: $fty:ty),* $(,)? })*) => {
        $(
            $(#[$doc])*
            pub struct $ty {
                $(#[allow(missing_docs)] pub $field: $fty,)*
            }

            impl Kernel for $ty {
                const NAME: &'static str = $name;
                fn args(&self) -> Vec<Arg> {
                    vec![$(Arg::from(self.$field)),*]
                }
            }
        )*

        /// Every declared kernel's name (tests/kernel_launches.rs checks them
        /// against kernels/*.cu).
        pub const DECLARED: &[&str] = &[$($name),*];
    };
}

kernels! {
    /// convert.cu: `out = fp16(x)`, n values.
    F32ToF16 = "f32_to_f16" { x: Ptr, out: Ptr, n: i64 }
    /// convert.cu: `out[r, c] += bias[c]`.
    AddBiasRows = "add_bias_rows" { out: Ptr, bias: Ptr, rows: i64, cols: i64 }
    /// convert.cu: as `AddBiasRows`, fp16 out.
    AddBiasRowsF16 = "add_bias_rows_f16" { out: Ptr, bias: Ptr, rows: i64, cols: i64 }

    /// elementwise.cu: `out = x * sigmoid(x)`.
    SiluF32 = "silu_f32" { x: Ptr, out: Ptr, n: i64 }
    /// elementwise.cu: `out = x[:, :f] * silu(x[:, f:])`.
    SwigluF32 = "swiglu_f32" { x: Ptr, out: Ptr, rows: i64, f: i64 }
    /// elementwise.cu: as `SwigluF32`, fp16 x and out, `f` even.
    SwigluF16 = "swiglu_f16" { x: Ptr, out: Ptr, rows: i64, f: i64 }
    /// elementwise.cu: timestep Fourier features.
    TimestepFeatures = "timestep_features" { t: Ptr, w: Ptr, out: Ptr, batch: i32, n: i32 }
    /// elementwise.cu: `out = x + table[position] * scale`, f32 table.
    AddPositionalF32 = "add_positional_f32" {
        x: Ptr, table: Ptr, scale: f32, offsets: Ptr, sequences: Ptr, rows: i32, cols: i64, out: Ptr,
    }
    /// elementwise.cu: as `AddPositionalF32`, fp16 table.
    AddPositionalF16 = "add_positional_f16" {
        x: Ptr, table: Ptr, scale: f32, offsets: Ptr, sequences: Ptr, rows: i32, cols: i64, out: Ptr,
    }
    /// elementwise.cu: one row per sequence, then the sequence.
    PrependRow = "prepend_row" {
        first: Ptr, rest: Ptr, rest_offsets: Ptr, out_offsets: Ptr, out_sequences: Ptr, rows: i32, cols: i64,
        out: Ptr,
    }
    /// elementwise.cu: `prepend_row`, then `add_positional` with an f32 table, in one pass.
    PrependRowPositionalF32 = "prepend_row_positional_f32" {
        first: Ptr, rest: Ptr, table: Ptr, scale: f32, rest_offsets: Ptr, out_offsets: Ptr, out_sequences: Ptr,
        rows: i32, cols: i64, out: Ptr,
    }
    /// elementwise.cu: as `PrependRowPositionalF32`, fp16 table.
    PrependRowPositionalF16 = "prepend_row_positional_f16" {
        first: Ptr, rest: Ptr, table: Ptr, scale: f32, rest_offsets: Ptr, out_offsets: Ptr, out_sequences: Ptr,
        rows: i32, cols: i64, out: Ptr,
    }
    /// elementwise.cu: every sequence without its first row.
    DropFirstRow = "drop_first_row" {
        x: Ptr, x_offsets: Ptr, out_offsets: Ptr, out_sequences: Ptr, rows: i32, cols: i64, out: Ptr,
    }

    /// layer_norm.cu: LayerNorm with optional adaLN modulation; 4 rows per 128-thread block.
    LayerNormF32 = "layer_norm_f32" {
        x: Ptr, gamma: Ptr, beta: Ptr, eps: f32, rows: i64, cols: i32, table: Ptr, table_cols: i32,
        scale_offset: i32, shift_offset: i32, offsets: Ptr, count: i32, out: Ptr,
    }
    /// layer_norm.cu: as `LayerNormF32`, fp16 out.
    LayerNormF16 = "layer_norm_f16" {
        x: Ptr, gamma: Ptr, beta: Ptr, eps: f32, rows: i64, cols: i32, table: Ptr, table_cols: i32,
        scale_offset: i32, shift_offset: i32, offsets: Ptr, count: i32, out: Ptr,
    }
    /// layer_norm.cu: `out = residual + branch * sigmoid(1 - gate)`.
    GatedResidualF32 = "gated_residual_f32" {
        branch: Ptr, residual: Ptr, rows: i32, cols: i64, table: Ptr, table_cols: i32, gate_offset: i32,
        sequences: Ptr, out: Ptr,
    }
    /// layer_norm.cu: as `GatedResidualF32`, fp16 branch.
    GatedResidualF16 = "gated_residual_f16" {
        branch: Ptr, residual: Ptr, rows: i32, cols: i64, table: Ptr, table_cols: i32, gate_offset: i32,
        sequences: Ptr, out: Ptr,
    }

    /// attention.cu: the f32 fallback attention.
    AttentionF32 = "attention_f32" {
        q: Ptr, q_ld: i32, k: Ptr, k_ld: i32, v: Ptr, v_ld: i32, q_offsets: Ptr, kv_offsets: Ptr, heads: i32,
        kv_heads: i32, head_dim: i32, scale: f32, inv_freq: Ptr, rotary_dim: i32, out: Ptr, out_ld: i32,
    }
    /// flash_attention.cu: tensor-core attention for head_dim 64.
    FlashAttentionHd64 = "flash_attention_hd64" {
        q: Ptr, q_ld: i32, k: Ptr, k_ld: i32, v: Ptr, v_ld: i32, q_offsets: Ptr, kv_offsets: Ptr,
        tile_starts: Ptr, count: i32, heads: i32, kv_heads: i32, scale: f32, rope_table: Ptr, rotary_dim: i32,
        out: Ptr, out_ld: i32,
    }
    /// flash_attention.cu: as `FlashAttentionHd64`, fp16 q, k, v and out.
    FlashAttentionHd64F16 = "flash_attention_hd64_f16" {
        q: Ptr, q_ld: i32, k: Ptr, k_ld: i32, v: Ptr, v_ld: i32, q_offsets: Ptr, kv_offsets: Ptr,
        tile_starts: Ptr, count: i32, heads: i32, kv_heads: i32, scale: f32, rope_table: Ptr, rotary_dim: i32,
        out: Ptr, out_ld: i32,
    }

    /// sampler.cu: `out = concat(x, x) * c_in`.
    CfgExpand = "cfg_expand" { x: Ptr, scalars: Ptr, x_sequences: Ptr, rows: i32, cols: i64, out: Ptr }
    /// sampler.cu: CFG and the v-denoiser.
    CfgDenoise = "cfg_denoise" {
        v: Ptr, x: Ptr, scalars: Ptr, x_sequences: Ptr, cfg: Ptr, rows: i32, cols: i64, out: Ptr,
    }
    /// sampler.cu: one DPM++ 3M SDE update in place.
    Dpmpp3mUpdate = "dpmpp_3m_update" {
        x: Ptr, denoised: Ptr, d1: Ptr, d2: Ptr, noise: Ptr, scalars: Ptr, x_sequences: Ptr, rows: i32, cols: i64,
    }
    /// sampler.cu: each DiT sequence's row of a per-step table.
    SelectStepRow = "select_step_row" {
        table: Ptr, table_rows: i32, scalars: Ptr, requests: i32, out: Ptr, rows: i64, cols: i64,
    }
    /// sampler.cu: seeded Philox Gaussian noise, token-major.
    PhiloxNormal = "philox_normal" {
        seed_lo: u32, seed_hi: u32, stream: u32, latent_len: i64, channels: i64, out: Ptr,
    }

    /// conv1d.cu: the dilated and the transposed conv as one implicit GEMM.
    Conv1dImplicitGemm = "conv1d_implicit_gemm" {
        x: Ptr, snake_alpha: Ptr, snake_beta: Ptr, w: Ptr, bias: Ptr, residual: Ptr, out: Ptr, m_rows: i32,
        n: i32, cin: i32, taps: i32, dilation: i32, pad: i32, in_offsets: Ptr, count: i32, out_offsets: Ptr,
        stride: i32,
    }
    /// conv1d.cu: SnakeBeta on its own.
    SnakeBetaF32 = "snake_beta_f32" { x: Ptr, alpha: Ptr, beta: Ptr, out: Ptr, n: i64, cols: i64 }

    /// vision.cu: im2col of non-overlapping patches.
    Patchify = "patchify" { images: Ptr, channels: i32, size: i32, patch: i32, out: Ptr, n_out: i64 }
    /// vision.cu: a weight row, then each sequence.
    PrependWeightRow = "prepend_weight_row" {
        row: Ptr, rest: Ptr, rest_offsets: Ptr, out_offsets: Ptr, out_sequences: Ptr, rows: i32, cols: i64,
        out: Ptr,
    }
    /// vision.cu: `out = x * sigmoid(1.702 x)`.
    QuickGeluF32 = "quick_gelu_f32" { x: Ptr, out: Ptr, n: i64 }
    /// vision.cu: the first row of every sequence.
    FirstRows = "first_rows" { x: Ptr, offsets: Ptr, count: i32, cols: i64, out: Ptr }
}
