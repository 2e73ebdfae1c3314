//! The sampling loop over a batch of requests.
//!
//! One graph, planned once into one arena, has two parts:
//! - the request constants, run once by `Sampling::new`: everything that does
//!   not change across steps, written into state tensors: each block's
//!   cross-attention K/V of the video tokens (cond: from the request's features
//!   through `to_cond_embed` + PE_c; uncond: from zero features, i.e. from the
//!   PE_c rows alone, which depend only on N), and the timestep embedding (and,
//!   for adaLN configs, each block's modulation table) of every step of the
//!   schedule, one row per step;
//! - the step, run by `Sampling::step` (and captured as one CUDA graph on a
//!   GPU, see `Backend::run_repeated`): `SelectStepRow` picks this step's rows
//!   of the timestep tables, the DiT runs on all cond sequences then all uncond
//!   ones, then the CFG/denoise op and the fused DPM++ update, which works in
//!   place on the state tensors x, d1, d2.
//!
//! Per step the host only writes a few scalars per request (computed in f64,
//! including the table row that `SelectStepRow` reads on the device) and,
//! when the step adds noise, the noise. Every request has its own schedule,
//! step index and DPM++ history: the timestep tables hold one block of rows
//! per distinct schedule, and each request's scalars point at its row. So a
//! batch can hold requests at different steps of different schedules, and
//! `Sampling::recompose` lets requests join and leave between steps
//! (step-level continuous batching): the graph is planned again for the new
//! composition and the kept requests' state carried over. Each request's
//! latents are the ones it gets alone: every row's computation is independent
//! of the other rows (bit for bit on the CPU).

use super::dpmpp::Dpmpp3mSde;
use super::rng::fill_normal;
use super::schedule::{VScalings, polyexponential_sigmas};
use crate::backend::Backend;
use crate::error::{Error, Result, ensure_finite};
use crate::graph::scalar_slot as slot;
use crate::graph::{Executor, Graph, Op, Segments, TensorId, TensorKind};
use crate::models::{Dit, DitBatch, DitConditioning, DitSequence};
use crate::tensor::HostTensor;

/// Schedule and DPM++ 3M SDE parameters shared by every request of a batch (lova-model.md section 5).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    /// Number of sampler steps (DiT evaluations, each on cond + uncond); 1..=2^24.
    pub steps: usize,
    /// Smallest nonzero noise level of the schedule (the last step's sigma), > 0.
    pub sigma_min: f64,
    /// Noise level of the first step, finite and >= `sigma_min`.
    pub sigma_max: f64,
    /// Exponent of the polyexponential ramp, > 0 (1 = equal steps in log sigma).
    pub rho: f64,
    /// SDE noise amount, >= 0 (0 makes the sampler deterministic after the initial noise).
    pub eta: f64,
    /// Scale of the noise added at each step, finite.
    pub s_noise: f64,
}

impl Default for SamplerSettings {
    /// The paper's settings.
    fn default() -> Self {
        SamplerSettings { steps: 150, sigma_min: 0.3, sigma_max: 500.0, rho: 1.0, eta: 1.0, s_noise: 1.0 }
    }
}

/// Noise levels the sampler accepts (`--sigma-min`, `--sigma-max`).
pub const SIGMA_RANGE: (f64, f64) = (1e-6, 1e6);
/// Largest `--eta` and `|--s-noise|`: the SDE's noise scales with them.
pub const MAX_ETA: f64 = 100.0;
/// Largest `|--s-noise|` (see `MAX_ETA`).
pub const MAX_S_NOISE: f64 = 100.0;
/// Largest `|--cfg|`: the guided prediction is uncond + cfg * (cond - uncond);
/// the paper uses 5 (its demo 7), and far past 100 it only amplifies rounding.
pub const MAX_CFG: f32 = 1000.0;

/// Checks a classifier-free guidance scale (`--cfg`) where it enters:
/// finite and at most `MAX_CFG` in magnitude.
pub fn check_cfg_scale(cfg: f32) -> Result<()> {
    if !(cfg.is_finite() && cfg.abs() <= MAX_CFG) {
        return Err(Error::InvalidInput(format!("--cfg must be a number from -{MAX_CFG} to {MAX_CFG}, got {cfg}")));
    }
    Ok(())
}

impl SamplerSettings {
    /// Checks the ranges documented on the fields; `Error::InvalidInput` otherwise.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidInput(what.to_string()));
        if self.steps == 0 {
            return bad("--steps must be at least 1");
        }
        // The step graph reads the step index as an f32 (`scalar_slot::STEP`).
        if self.steps > 1 << 24 {
            return bad("--steps must be at most 16777216");
        }
        if !(self.sigma_min > 0.0 && self.sigma_max.is_finite() && self.sigma_min <= self.sigma_max) {
            return bad("sigmas must satisfy 0 < sigma-min <= sigma-max < infinity");
        }
        if !(self.eta >= 0.0 && self.eta.is_finite() && self.s_noise.is_finite() && self.rho > 0.0) {
            return bad("eta must be >= 0, s-noise finite and rho > 0");
        }
        // Finite is not enough: noise scaled by sigma-max or s-noise beyond these
        // overflows f32 in the first step and the run ends in NaN latents. The
        // released settings (0.3, 500, eta 1, s-noise 1) are far inside.
        let (min, max) = SIGMA_RANGE;
        if self.sigma_min < min || self.sigma_max > max {
            return Err(Error::InvalidInput(format!("sigmas must lie from {min} to {max}")));
        }
        if self.eta > MAX_ETA || self.s_noise.abs() > MAX_S_NOISE || !self.rho.is_finite() {
            return Err(Error::InvalidInput(format!(
                "eta must be at most {MAX_ETA}, |s-noise| at most {MAX_S_NOISE} and rho finite"
            )));
        }
        Ok(())
    }

    /// The `steps + 1` noise levels, from `sigma_max` down to `sigma_min`, then 0.
    pub fn sigmas(&self) -> Vec<f64> {
        polyexponential_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)
    }
}

/// Where a request's Gaussian noise comes from: the seeded generator
/// (`rng` module) unless tensors are injected (tests, `--init-noise`).
#[derive(Debug, Clone, Default)]
pub struct RequestNoise {
    /// Seed of the Philox generator, used for every stream not injected.
    pub seed: u64,
    /// Initial noise `[io_channels, T']`.
    pub initial: Option<HostTensor>,
    /// Noise of step i, `[io_channels, T']`, for every step that adds noise.
    pub steps: Option<Vec<HostTensor>>,
}

impl RequestNoise {
    /// Noise of `stream` (0: initial, i + 1: step i) in token-major layout `[T', C]`.
    /// Appends the noise of `stream` (0: initial, i + 1: step i) to `out` in
    /// token-major layout `[T', C]`; `scratch` holds generated noise, so that the
    /// sampling loop reuses its buffers instead of allocating.
    fn append_token_major(
        &self,
        stream: usize,
        channels: usize,
        latent_len: usize,
        scratch: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let injected = match stream {
            0 => self.initial.as_ref(),
            i => self
                .steps
                .as_ref()
                .map(|s| s.get(i - 1))
                .map(|t| {
                    t.ok_or_else(|| Error::InvalidInput(format!("injected step noise has no entry for step {}", i - 1)))
                })
                .transpose()?,
        };
        let canonical: &[f32] = match injected {
            Some(t) => {
                if t.shape != [channels, latent_len] {
                    return Err(Error::InvalidInput(format!(
                        "injected noise has shape {:?}, expected [{channels}, {latent_len}]",
                        t.shape
                    )));
                }
                ensure_finite("injected noise", &t.data)?;
                &t.data
            }
            None => {
                scratch.resize(channels * latent_len, 0.0);
                fill_normal(self.seed, stream as u32, scratch);
                scratch
            }
        };
        out.extend((0..latent_len).flat_map(|t| (0..channels).map(move |c| canonical[c * latent_len + t])));
        Ok(())
    }
}

/// One clip to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// CLIP frame features `[N, cond_token_dim]`.
    pub features: HostTensor,
    /// Latent frames T' to generate.
    pub latent_len: usize,
    /// Classifier-free guidance scale (1 = cond only, paper default 5).
    pub cfg_scale: f32,
    /// Source of the initial and per-step noise.
    pub noise: RequestNoise,
}

/// Runs the sampler for all `requests` together; returns latents `[io_channels, T']`
/// per request. `progress(step, steps)` is called after each step.
pub fn sample<B: Backend>(
    backend: &B,
    dit: &Dit<B>,
    requests: &[Request],
    settings: &SamplerSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<HostTensor>> {
    let mut sampling = Sampling::new(backend, dit, requests, settings)?;
    while sampling.step()? {
        progress(sampling.steps_done(), settings.steps);
    }
    sampling.latents()
}

/// A batch of requests being sampled: the step graph, its arena and each
/// request's sampler history. Planning does all the allocation; `step` only
/// writes a few scalars (and noise) and runs the graph.
pub struct Sampling<'a, B: Backend> {
    backend: &'a B,
    dit: &'a Dit<B>,
    members: Vec<Member>,
    io_channels: usize,
    latent_seg: Segments,
    exec: Executor<'a, B>,
    tensors: StepTensors,
    noise_buf: Vec<f32>,
    noise_scratch: Vec<f32>,
    scalar_buf: Vec<f32>,
    /// Per request: whether this step's update adds noise.
    adds_noise: Vec<bool>,
    /// The ops of one step (the request constants come before them).
    step_ops: std::ops::Range<usize>,
}

/// One request of a batch, where it stands in its own schedule.
struct Member {
    request: Request,
    settings: SamplerSettings,
    /// Its `steps + 1` noise levels.
    sigmas: Vec<f64>,
    history: Dpmpp3mSde,
    /// Steps run so far.
    done: usize,
    /// Row of the timestep tables holding its schedule's step 0.
    table_row: usize,
}

impl Member {
    fn new(request: Request, settings: SamplerSettings) -> Result<Member> {
        settings.validate()?;
        let sigmas = settings.sigmas();
        Ok(Member { request, settings, sigmas, history: Dpmpp3mSde::new(), done: 0, table_row: 0 })
    }

    fn finished(&self) -> bool {
        self.done == self.settings.steps
    }

    /// The timestep `t` of each step of its schedule: what its block of the tables is made from.
    fn timesteps(&self) -> Vec<f32> {
        self.sigmas[..self.settings.steps].iter().map(|&s| VScalings::at(s).t as f32).collect()
    }
}

struct StepTensors {
    scalars: TensorId,
    noise: TensorId,
    x: TensorId,
    d1: TensorId,
    d2: TensorId,
}

/// A request's sampler state between two steps, token-major `[T', C]`: what
/// `Sampling::recompose` carries over to the batch it goes on in.
struct MemberState {
    x: Vec<f32>,
    d1: Vec<f32>,
    d2: Vec<f32>,
}

impl<'a, B: Backend> Sampling<'a, B> {
    /// Plans the batch's graph and arena, computes its per-request constants and
    /// writes the initial noise; every request follows `settings`.
    pub fn new(backend: &'a B, dit: &'a Dit<B>, requests: &[Request], settings: &SamplerSettings) -> Result<Self> {
        Self::with_settings(backend, dit, requests.iter().map(|r| (r.clone(), settings.clone())).collect())
    }

    /// As `new`, with each request's own schedule and sampler settings.
    pub fn with_settings(backend: &'a B, dit: &'a Dit<B>, requests: Vec<(Request, SamplerSettings)>) -> Result<Self> {
        let members = requests.into_iter().map(|(r, s)| Member::new(r, s)).collect::<Result<Vec<_>>>()?;
        let states = members.iter().map(|_| None).collect();
        Self::plan(backend, dit, members, states)
    }

    /// Plans the graph for `members` and runs its constants; each starts from
    /// its initial noise, or from its carried-over state.
    fn plan(
        backend: &'a B,
        dit: &'a Dit<B>,
        mut members: Vec<Member>,
        states: Vec<Option<MemberState>>,
    ) -> Result<Self> {
        let cfg = &dit.config;
        let (io, cd) = (cfg.io_channels, cfg.cond_token_dim);
        if members.is_empty() {
            return Err(Error::InvalidInput("a sampling batch needs at least one request".into()));
        }
        for (i, m) in members.iter().enumerate() {
            let r = &m.request;
            if r.features.shape.len() != 2 || r.features.shape[1] != cd {
                return Err(Error::InvalidInput(format!(
                    "request {i}: features have shape {:?}, expected [N, {cd}]",
                    r.features.shape
                )));
            }
            ensure_finite(&format!("request {i}: video features"), &r.features.data)?;
            if !r.cfg_scale.is_finite() {
                return Err(Error::InvalidInput(format!("request {i}: the CFG scale must be finite")));
            }
        }
        let cond: Vec<DitSequence> = members
            .iter()
            .map(|m| DitSequence { latent_len: m.request.latent_len, context_len: m.request.features.shape[0] })
            .collect();
        let batch = DitBatch { sequences: cond.iter().chain(cond.iter()).copied().collect() };
        dit.check_batch(&batch)?;
        let latent_seg = Segments::from_lengths(members.iter().map(|m| m.request.latent_len));
        let rows = latent_seg.total();

        // The timestep tables: one block of rows per distinct schedule.
        let mut schedules: Vec<Vec<f32>> = Vec::new();
        let mut table_rows = 0;
        for m in &mut members {
            let ts = m.timesteps();
            m.table_row = match schedules.iter().position(|s| *s == ts) {
                Some(k) => schedules[..k].iter().map(Vec::len).sum(),
                None => {
                    let row = table_rows;
                    table_rows += ts.len();
                    schedules.push(ts);
                    row
                }
            };
        }
        // The step graph reads table rows as f32 (`scalar_slot::STEP`).
        if table_rows > 1 << 24 {
            return Err(Error::Limit(format!("the batch's schedules have {table_rows} steps in all, more than 2^24")));
        }

        let mut g = Graph::with_activations(backend.activation_dtype());
        let scalars = g.input("step_scalars", members.len(), slot::COUNT);
        let t_table = g.input("schedule_t", table_rows, 1);
        let features = g.input("features", batch.context_rows(), cd);
        let noise = g.input("noise", rows, io);
        let x = g.tensor("x", rows, io, TensorKind::State);
        let d1 = g.tensor("denoised_1", rows, io, TensorKind::State);
        let d2 = g.tensor("denoised_2", rows, io, TensorKind::State);

        // Request constants.
        let cross_kv = dit.build_cross_kv(&mut g, &batch, features);
        let timestep = dit.build_timestep(&mut g, t_table);
        for &c in cross_kv.iter().chain([&timestep.embed]).chain(&timestep.modulation) {
            g.mark_state(c);
        }
        let constants_end = g.ops.len();

        // The step: each request's row of the timestep tables, one per DiT sequence.
        let select = |g: &mut Graph, table: TensorId| {
            let d = g.desc(table).clone();
            let out = g.temp(format!("{}.step", d.name), batch.len(), d.cols);
            g.push(Op::SelectStepRow { table, scalars, out });
            out
        };
        let conditioning = DitConditioning {
            timestep: select(&mut g, timestep.embed),
            modulation: timestep.modulation.iter().map(|&m| select(&mut g, m)).collect(),
            cross_kv,
        };
        let x_segments = g.add_segments(latent_seg.clone());
        let x_in = g.temp("x_in", 2 * rows, io);
        g.push(Op::CfgExpand { x, scalars, x_segments, out: x_in });
        let v = dit.build_denoiser(&mut g, &batch, x_in, &conditioning);
        let denoised = g.temp("denoised", rows, io);
        g.push(Op::CfgDenoise {
            v,
            x,
            scalars,
            x_segments,
            cfg_scales: members.iter().map(|m| m.request.cfg_scale).collect(),
            out: denoised,
        });
        g.push(Op::Dpmpp3mUpdate { x, denoised, d1, d2, noise, scalars, x_segments });
        let step_ops = constants_end..g.ops.len();
        let mut exec = Executor::new(backend, dit.weights(), g)?;

        // Conditional features, then zeros for the unconditional branch.
        let mut f: Vec<f32> = members.iter().flat_map(|m| m.request.features.data.iter().copied()).collect();
        f.resize(batch.context_rows() * cd, 0.0);
        exec.write(features, &f)?;
        exec.write(t_table, &schedules.concat())?;
        exec.run_ops(0..constants_end)?;

        // The state: carried over, or each request's initial noise (and zero history).
        let (mut x0, mut h1, mut h2) = (Vec::with_capacity(rows * io), Vec::new(), Vec::new());
        for (m, state) in members.iter().zip(states) {
            let n = m.request.latent_len * io;
            match state {
                Some(state) => {
                    x0.extend_from_slice(&state.x);
                    h1.extend_from_slice(&state.d1);
                    h2.extend_from_slice(&state.d2);
                }
                None => {
                    let start = x0.len();
                    m.request.noise.append_token_major(0, io, m.request.latent_len, &mut Vec::new(), &mut x0)?;
                    x0[start..].iter_mut().for_each(|z| *z = (*z as f64 * m.sigmas[0]) as f32);
                    h1.resize(h1.len() + n, 0.0);
                    h2.resize(h2.len() + n, 0.0);
                }
            }
        }
        exec.write(x, &x0)?;
        exec.write(d1, &h1)?;
        exec.write(d2, &h2)?;

        Ok(Sampling {
            backend,
            dit,
            members,
            io_channels: io,
            latent_seg,
            exec,
            tensors: StepTensors { scalars, noise, x, d1, d2 },
            step_ops,
            noise_buf: Vec::with_capacity(rows * io),
            noise_scratch: Vec::new(),
            scalar_buf: Vec::new(),
            adds_noise: Vec::new(),
        })
    }

    /// Steps run so far by the request furthest behind (all of a batch made by
    /// `new` run in lock-step).
    pub fn steps_done(&self) -> usize {
        self.members.iter().map(|m| m.done).min().unwrap_or(0)
    }

    /// Steps run so far and steps in all, of the batch's request `b`.
    pub fn progress_of(&self, b: usize) -> (usize, usize) {
        (self.members[b].done, self.members[b].settings.steps)
    }

    /// Number of requests in the batch.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the batch has no request (never true: a batch holds at least one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Latent rows of the batch (the sum of its requests' latent lengths).
    pub fn rows(&self) -> usize {
        self.latent_seg.total()
    }

    /// The requests of this batch, in order.
    pub fn requests(&self) -> Vec<&Request> {
        self.members.iter().map(|m| &m.request).collect()
    }

    /// Whether request `b` ran all the steps of its schedule.
    pub fn is_finished(&self, b: usize) -> bool {
        self.members[b].finished()
    }

    /// Goes on without the requests for which `keep(index)` is false (cancelled
    /// ones); see `recompose`. `None` when no request is kept.
    pub fn retain(self, keep: impl Fn(usize) -> bool) -> Result<Option<Sampling<'a, B>>> {
        self.recompose(keep, Vec::new())
    }

    /// Goes on without the requests for which `keep(index)` is false (finished
    /// or cancelled ones) and with `add` (new requests with their settings,
    /// appended after the kept ones, from their first step): the graph is
    /// planned again for the new composition, its constants recomputed and
    /// the kept requests' sampler state (x, the two previous denoised values,
    /// the step history) carried over, so that every request's latents are
    /// those it gets alone, bit for bit on the CPU. `None` when the batch
    /// would be empty. Costs one planning and one run of the request
    /// constants (cross-attention K/V, timestep tables): about one step.
    pub fn recompose(
        self,
        keep: impl Fn(usize) -> bool,
        add: Vec<(Request, SamplerSettings)>,
    ) -> Result<Option<Sampling<'a, B>>> {
        let kept: Vec<usize> = (0..self.members.len()).filter(|&b| keep(b)).collect();
        if kept.len() == self.members.len() && add.is_empty() {
            return Ok(Some(self));
        }
        let added = add.into_iter().map(|(r, s)| Member::new(r, s)).collect::<Result<Vec<_>>>()?;
        if kept.is_empty() && added.is_empty() {
            return Ok(None);
        }
        let io = self.io_channels;
        let (x, d1, d2) =
            (self.exec.read(self.tensors.x)?, self.exec.read(self.tensors.d1)?, self.exec.read(self.tensors.d2)?);
        let rows_of = |all: &[f32], b: usize| {
            let r = self.latent_seg.range(b);
            all[r.start * io..r.end * io].to_vec()
        };
        let mut states: Vec<Option<MemberState>> = kept
            .iter()
            .map(|&b| Some(MemberState { x: rows_of(&x, b), d1: rows_of(&d1, b), d2: rows_of(&d2, b) }))
            .collect();
        states.extend(added.iter().map(|_| None));
        let (backend, dit) = (self.backend, self.dit);
        let mut members = self.members;
        let mut b = 0;
        members.retain(|_| {
            b += 1;
            kept.contains(&(b - 1))
        });
        members.extend(added);
        // Free this batch's arena before planning the new one.
        drop((self.exec, x, d1, d2));
        Ok(Some(Self::plan(backend, dit, members, states)?))
    }

    /// Bytes of the arena this batch needs (activations and sampler state).
    pub fn arena_bytes(&self) -> usize {
        self.exec.arena_bytes()
    }

    /// The planned graph (request constants, then one step) and the range of
    /// its ops that is one step: what a cost model of the step reads.
    pub fn step_graph(&self) -> (&Graph, std::ops::Range<usize>) {
        (self.exec.graph(), self.step_ops.clone())
    }

    /// Matrix-product FLOP of one step (DiT on cond + uncond; see `Graph::flops`),
    /// to turn a measured step time into achieved TFLOP/s. Only the step's ops
    /// count: the request constants are computed once, before the first step.
    pub fn step_flops(&self) -> u64 {
        let g = self.exec.graph();
        g.ops[self.step_ops.clone()].iter().map(|op| g.op_flops(op)).sum()
    }

    /// Runs the next step of every request; false when all had run all their
    /// steps. A batch whose requests finish at different steps must let the
    /// finished ones go (`recompose`) before it steps again: stepping it is an error.
    pub fn step(&mut self) -> Result<bool> {
        let finished = self.members.iter().filter(|m| m.finished()).count();
        if finished == self.members.len() {
            return Ok(false);
        }
        if finished > 0 {
            return Err(Error::InvalidInput(format!(
                "{finished} of the batch's {} requests finished their steps: they must leave the batch \
                 (Sampling::recompose) before it steps again",
                self.members.len()
            )));
        }
        let io = self.io_channels;
        self.scalar_buf.clear();
        self.adds_noise.clear();
        for m in &mut self.members {
            let (i, sigmas) = (m.done, &m.sigmas);
            let s = VScalings::at(sigmas[i]);
            let k = m.history.step(sigmas[i], sigmas[i + 1], m.settings.eta, m.settings.s_noise);
            let mut row = [0.0f32; slot::COUNT];
            row[slot::C_IN] = s.c_in as f32;
            row[slot::C_SKIP] = s.c_skip as f32;
            row[slot::C_OUT] = s.c_out as f32;
            row[slot::X] = k.x as f32;
            row[slot::DENOISED] = k.denoised as f32;
            row[slot::D1] = k.d1 as f32;
            row[slot::D2] = k.d2 as f32;
            row[slot::NOISE] = k.noise as f32;
            row[slot::STEP] = (m.table_row + i) as f32;
            self.scalar_buf.extend_from_slice(&row);
            self.adds_noise.push(k.noise != 0.0);
        }
        self.exec.write(self.tensors.scalars, &self.scalar_buf)?;
        // Noise of stream `done + 1` for each request whose update adds noise;
        // the others' rows are not read (a zero coefficient skips the term).
        if self.adds_noise.contains(&true) && !self.noise_on_device()? {
            self.noise_buf.clear();
            for (m, &adds) in self.members.iter().zip(&self.adds_noise) {
                let r = &m.request;
                if adds {
                    r.noise.append_token_major(
                        m.done + 1,
                        io,
                        r.latent_len,
                        &mut self.noise_scratch,
                        &mut self.noise_buf,
                    )?;
                } else {
                    self.noise_buf.resize(self.noise_buf.len() + r.latent_len * io, 0.0);
                }
            }
            self.exec.write(self.tensors.noise, &self.noise_buf)?;
        }
        self.exec.run_repeated(self.step_ops.clone())?;
        self.members.iter_mut().for_each(|m| m.done += 1);
        Ok(true)
    }

    /// Generates the seeded noise of each request that needs it (`adds_noise`) on
    /// the device when the backend can and no request injects its own; false
    /// means: upload host noise. (Same generator: equal to the host's noise up
    /// to a rare last-bit difference of the f64 transcendental functions.)
    fn noise_on_device(&mut self) -> Result<bool> {
        if self.members.iter().any(|m| m.request.noise.steps.is_some()) {
            return Ok(false);
        }
        for (b, m) in self.members.iter().enumerate().filter(|(b, _)| self.adds_noise[*b]) {
            let row = self.latent_seg.offsets[b];
            let (seed, stream) = (m.request.noise.seed, (m.done + 1) as u32);
            if !self.exec.fill_noise(self.tensors.noise, row, seed, stream, m.request.latent_len)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Latents `[io_channels, T']` of request `b` (final once it ran all its steps).
    pub fn latents_of(&self, b: usize) -> Result<HostTensor> {
        let io = self.io_channels;
        let r = self.latent_seg.range(b);
        let out = self.exec.read_rows(self.tensors.x, r.clone())?;
        ensure_finite("sampled latents", &out)?;
        Ok(HostTensor::new(vec![r.len(), io], out).transposed())
    }

    /// Latents `[io_channels, T']` per request (final once all steps ran).
    pub fn latents(&self) -> Result<Vec<HostTensor>> {
        (0..self.members.len()).map(|b| self.latents_of(b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_overflow_are_refused() {
        assert!(SamplerSettings::default().validate().is_ok());
        let d = SamplerSettings::default;
        for bad in [
            SamplerSettings { sigma_max: 1e300, ..d() },
            SamplerSettings { sigma_min: 1e-300, ..d() },
            SamplerSettings { s_noise: 1e30, ..d() },
            SamplerSettings { s_noise: -1e30, ..d() },
            SamplerSettings { eta: 1e30, ..d() },
            SamplerSettings { rho: f64::INFINITY, ..d() },
            SamplerSettings { sigma_max: f64::NAN, ..d() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(check_cfg_scale(5.0).is_ok() && check_cfg_scale(-1.0).is_ok());
        for bad in [f32::NAN, f32::INFINITY, 1e30, -1e4] {
            let e = check_cfg_scale(bad).unwrap_err().to_string();
            assert!(e.contains("--cfg"), "{e}");
        }
    }
}
