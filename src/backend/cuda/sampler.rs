//! Launchers of kernels/sampler.cu: CFG expansion, CFG + v-denoiser, the
//! DPM++ 3M SDE update, the per-step table row and the seeded noise.

use cudarc::driver::DevicePtr;

use super::kernels::{self as k, Ptr};
use super::launch::{Launcher, wrong_op};
use super::{CudaArena, CudaBackend, driver_err};
use crate::error::{Error, Result};
use crate::graph::Op;

impl Launcher<'_> {
    pub(super) fn cfg_expand(&mut self, op: &Op) -> Result<()> {
        let Op::CfgExpand { x, scalars, x_segments, out } = op else { return Err(wrong_op(op, "cfg_expand")) };
        let cols = self.desc(*x).cols;
        let (x_sequences, rows) = self.row_map(*x_segments)?;
        let kernel = k::CfgExpand {
            x: self.ptr(*x),
            scalars: self.ptr(*scalars),
            x_sequences,
            rows,
            cols: cols as i64,
            out: self.ptr(*out),
        };
        self.rows(rows as usize, cols, kernel)
    }

    pub(super) fn cfg_denoise(&mut self, op: &Op) -> Result<()> {
        let Op::CfgDenoise { v, x, scalars, x_segments, cfg_scales, out } = op else {
            return Err(wrong_op(op, "cfg_denoise"));
        };
        let cols = self.desc(*x).cols;
        let (x_sequences, rows) = self.row_map(*x_segments)?;
        let kernel = k::CfgDenoise {
            v: self.ptr(*v),
            x: self.ptr(*x),
            scalars: self.ptr(*scalars),
            x_sequences,
            cfg: self.table(cfg_scales.iter().map(|s| s.to_bits()).collect())?,
            rows,
            cols: cols as i64,
            out: self.ptr(*out),
        };
        self.rows(rows as usize, cols, kernel)
    }

    pub(super) fn dpmpp_3m_update(&mut self, op: &Op) -> Result<()> {
        let Op::Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars, x_segments } = op else {
            return Err(wrong_op(op, "dpmpp_3m_update"));
        };
        let cols = self.desc(*x).cols;
        let (x_sequences, rows) = self.row_map(*x_segments)?;
        let kernel = k::Dpmpp3mUpdate {
            x: self.ptr(*x),
            denoised: self.ptr(*denoised),
            d1: self.ptr(*d1),
            d2: self.ptr(*d2),
            noise: self.ptr(*noise),
            scalars: self.ptr(*scalars),
            x_sequences,
            rows,
            cols: cols as i64,
        };
        self.rows(rows as usize, cols, kernel)
    }

    pub(super) fn select_step_row(&mut self, op: &Op) -> Result<()> {
        let Op::SelectStepRow { table, scalars, out } = op else { return Err(wrong_op(op, "select_step_row")) };
        let d = self.desc(*out);
        let kernel = k::SelectStepRow {
            table: self.ptr(*table),
            table_rows: self.desc(*table).rows as i32,
            scalars: self.ptr(*scalars),
            requests: self.desc(*scalars).rows as i32,
            out: self.ptr(*out),
            rows: d.rows as i64,
            cols: d.cols as i64,
        };
        self.elementwise(d.len(), kernel)
    }
}

impl CudaBackend {
    /// Fills the arena at `offset` (`[latent_len, channels]` token-major) with
    /// the seeded Philox noise of `stream`, as `sampler::rng::fill_normal`
    /// followed by the transpose to token-major (`Backend::fill_noise`).
    pub fn philox_normal(
        &self,
        arena: &mut CudaArena,
        offset: usize,
        seed: u64,
        stream: u32,
        latent_len: usize,
        channels: usize,
    ) -> Result<()> {
        let n = latent_len * channels;
        if offset + n > arena.data.len() {
            return Err(Error::InvalidInput("noise is outside the arena".into()));
        }
        self.ctx.bind_to_thread().map_err(driver_err("binding the CUDA context"))?;
        let out = Ptr(arena.data.device_ptr(&self.stream).0).add_f32(offset);
        let kernel = k::PhiloxNormal {
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            stream,
            latent_len: latent_len as i64,
            channels: channels as i64,
            out,
        };
        self.launch_elementwise(n, kernel)
    }
}
