//! The CUDA backend: cudarc with the CUDA libraries loaded at run time, so the
//! binary builds and runs on machines without CUDA. At start it needs the
//! driver (`libcuda.so.1`), NVRTC (`libnvrtc.so.13` or `.12`) and cuBLASLt
//! (`libcublasLt.so.13` or `.12`), found through the usual library search
//! (`LD_LIBRARY_PATH`, ld.so.conf).
//!
//! Numerics (lova-model.md section 8): matrices (linear layers and the
//! position tables) are stored as fp16; vectors (LayerNorm gamma/beta, biases,
//! inv_freq, the timestep Fourier weights) stay f32 (see `CudaWeight`). The
//! position tables could stay f32 too, but the upload sees only a shape; their
//! fp16 rounding (2^-11 relative on a term scaled by 1536^-0.5) is far below
//! the GEMMs' error. The arena, and so the residual stream and every
//! activation, is f32; LayerNorm statistics, softmax, RoPE and the sampler
//! state are computed in f32 (angles in f64). GEMMs run on cuBLASLt with fp16
//! operands and f32 accumulation and output: each Linear first converts its
//! f32 input to fp16 in a scratch buffer (`convert.cu`). That costs one extra
//! read and write of the GEMM input, small next to the GEMM, and is what the
//! reference does under autocast (fp16 operands); cuBLASLt has no mixed f32 x
//! fp16 GEMM, and a TF32 GEMM would need f32 weights (twice the memory).
//!
//! All work is enqueued on one stream; `read` waits for it. Kernels are
//! compiled by NVRTC for the device (cached on disk, see `compile`).
//!
//! Memory: weights are uploaded once (those the source stores as fp16, as an
//! engine file does, straight from its mmap: `upload_weight_from`); everything
//! a graph needs besides them (its arena, the fp16 GEMM scratch, constant
//! tables) is allocated when its executor is made (`Backend::prepare`), so a
//! run allocates nothing, which is also what lets a sampler step be captured
//! as a CUDA graph (`capture`).
//! Every device allocation is counted (`Backend::device_allocations`).

pub mod attention;
mod capture;
pub mod compile;
mod conv;
mod elementwise;
mod gemm;
pub mod kernels;
mod launch;
mod linear;
mod norm;
mod sampler;
pub mod vgpu;
mod vision;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError};
use rayon::prelude::*;

use super::{Backend, OpContext};
use crate::error::{Error, Result};
use crate::graph::{DType, Op, Segments};
use crate::tensor::HostTensor;
use crate::weights::TensorSource;
use gemm::Gemm;

fn driver_err(what: impl std::fmt::Display) -> impl Fn(DriverError) -> Error {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

/// The CUDA libraries this backend needs that cannot be loaded here.
pub fn missing_libraries() -> Vec<&'static str> {
    // With LOVA_VGPU=1 the virtual GPU's libraries count as present (its
    // errors are reported by `CudaBackend::new`).
    let _ = vgpu::activate();
    let mut missing = Vec::new();
    // SAFETY: each probe only tries to dlopen the library by its usual names.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            missing.push("the NVIDIA driver (libcuda.so.1)");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            missing.push("NVRTC (libnvrtc.so.13 or .12)");
        }
        if !cudarc::cublaslt::sys::is_culib_present() {
            missing.push("cuBLASLt (libcublasLt.so.13 or .12)");
        }
    }
    missing
}

/// Refuses an NVRTC or cuBLASLt newer (by major version) than the driver:
/// the driver cannot load the cubins of a newer NVRTC, and a newer cuBLASLt
/// does not initialise on an older driver (CUDA Compatibility guide, "Minor
/// Version Compatibility" holds within a major version only). Without this a
/// CUDA 13 library on a 12.x driver fails at the first module load instead.
/// `driver` is cuDriverGetVersion's value (12080 for 12.8), `cublaslt`
/// cublasLtGetVersion's (130000 for 13.0.0).
pub fn check_library_versions(driver: i32, nvrtc: (i32, i32), cublaslt: usize) -> Result<()> {
    let driver_major = driver / 1000;
    let (driver_text, nvrtc_text) =
        (format!("{}.{}", driver / 1000, driver % 1000 / 10), format!("{}.{}", nvrtc.0, nvrtc.1));
    if nvrtc.0 > driver_major {
        return Err(Error::Cuda(format!(
            "NVRTC {nvrtc_text} is newer than the driver (CUDA {driver_text}): its kernels would not load; \
             use the NVRTC of CUDA {driver_major} (e.g. `pip install \"nvidia-cuda-nvrtc<{}\"`) or update the driver",
            driver_major + 1
        )));
    }
    let cublaslt_major = (cublaslt / 10000) as i32;
    if cublaslt_major > driver_major {
        return Err(Error::Cuda(format!(
            "cuBLASLt {}.{}.{} is newer than the driver (CUDA {driver_text}); use the cuBLAS of CUDA {driver_major} \
             or update the driver",
            cublaslt / 10000,
            cublaslt % 10000 / 100,
            cublaslt % 100
        )));
    }
    Ok(())
}

/// What the backend runs on, for messages and logs.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// CUDA device ordinal (0 for the first GPU).
    pub ordinal: usize,
    /// The GPU's name as the driver reports it.
    pub name: String,
    /// e.g. `sm_90`.
    pub arch: String,
    /// Total device memory in bytes.
    pub memory_bytes: usize,
    /// Driver API version, e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    /// NVRTC version (major, minor).
    pub nvrtc_version: (i32, i32),
    /// cuBLASLt version, e.g. 130100 for 13.1.0.
    pub cublaslt_version: usize,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {:.0} GiB), driver CUDA {}.{}, NVRTC {}.{}, cuBLASLt {}",
            self.name,
            self.arch,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            self.driver_version % 1000 / 10,
            self.nvrtc_version.0,
            self.nvrtc_version.1,
            self.cublaslt_version
        )
    }
}

/// The CUDA backend: one device, one stream, NVRTC-compiled kernels, cuBLASLt GEMMs.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    /// Each kernel's parameter sizes as the driver reads them from the cubin
    /// (`cuFuncGetParamInfo`, CUDA 12.4+; empty when the driver lacks it).
    param_sizes: HashMap<String, Vec<usize>>,
    gemm: Gemm,
    info: DeviceInfo,
    /// Device allocations so far (arenas, weights, scratch, tables, workspace).
    allocations: AtomicU64,
    /// Whether `run_repeated` captures CUDA graphs (`capture::ENV_SWITCH`).
    graph_capture: AtomicBool,
    /// Whether model graphs built for this backend keep block activations in
    /// f32 rather than fp16 (`ACTIVATIONS_ENV`, `set_f32_activations`).
    f32_activations: AtomicBool,
    /// CUDA graphs captured so far, and why the last failed capture failed:
    /// a capture that falls back to plain launches must be visible.
    captured_graphs: AtomicU64,
    capture_failure: std::sync::Mutex<Option<String>>,
}

/// The arena of one executor, plus what its graph needs on the device besides
/// tensors: the fp16 scratch of GEMM inputs (sized to the graph's largest
/// Linear input), small constant tables (segment offsets, row -> sequence
/// maps, CFG scales, RoPE angles), all made by `prepare` before the first run,
/// and the CUDA graphs captured from
/// its repeated parts (they hold this arena's addresses, so they live with it).
pub struct CudaArena {
    data: CudaSlice<f32>,
    staging: Option<Staging>,
    half: Option<CudaSlice<u16>>,
    tables: HashMap<Vec<u32>, CudaSlice<u32>>,
    /// The flash kernel's RoPE angle tables (`attention::rope_table`), by
    /// (inv_freq weight, rotary_dim, positions).
    rope_tables: HashMap<(usize, usize, usize), CudaSlice<f32>>,
    recordings: capture::Recordings,
}

/// Slots of page-locked host memory for small writes (the per-step scalars).
/// A copy from page-locked memory is asynchronous (Driver API, "API
/// synchronization behavior"; from pageable memory the host may wait), so the
/// host enqueues step n + 1 while step n runs. A slot is written again only
/// `STAGING_SLOTS` writes later, after its copy has run (its event), so the
/// host never overwrites what a queued copy has yet to read.
struct Staging {
    host: *mut f32,
    events: Vec<cudarc::driver::CudaEvent>,
    next: usize,
}

const STAGING_SLOTS: usize = 3;
/// Floats per slot: writes up to this size are staged.
const STAGING_FLOATS: usize = 256;

// SAFETY: the page-locked buffer is owned by the arena and touched only
// through `&mut CudaArena`.
unsafe impl Send for Staging {}
unsafe impl Sync for Staging {}

impl Drop for Staging {
    fn drop(&mut self) {
        // Queued copies may still read the buffer: wait for them first.
        for e in &self.events {
            let _ = e.synchronize();
        }
        // SAFETY: allocated by malloc_host in `Staging::new`, freed once.
        let _ = unsafe { cudarc::driver::result::free_host(self.host as *mut std::ffi::c_void) };
    }
}

impl Staging {
    fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        let events = (0..STAGING_SLOTS)
            .map(|_| ctx.new_event(None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(driver_err("creating the staging events"))?;
        // SAFETY: a plain page-locked allocation, freed in Drop.
        let host = unsafe { cudarc::driver::result::malloc_host(STAGING_SLOTS * STAGING_FLOATS * 4, 0) }
            .map_err(driver_err("allocating page-locked staging memory"))? as *mut f32;
        Ok(Staging { host, events, next: 0 })
    }
}

/// A weight on the device. The upload sees only a shape, not the op that will
/// use the weight, so: a tensor of two or more dimensions gets an fp16 copy (a
/// linear layer, a position table); a tensor with at most one dimension larger
/// than 1 gets an f32 copy (gamma, beta, a bias, inv_freq, the `[n, 1]`
/// timestep Fourier weights). `[n, 1]` and `[1, n]` get both: they are vectors
/// that could also be a one-feature linear layer, and tiny.
pub struct CudaWeight {
    /// The tensor's shape as loaded.
    pub shape: Vec<usize>,
    f16: Option<CudaSlice<u16>>,
    f32: Option<CudaSlice<f32>>,
}

impl CudaWeight {
    /// Elements of the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the device holds an fp16 copy (matrices).
    pub fn has_f16(&self) -> bool {
        self.f16.is_some()
    }
    /// Whether the device holds an f32 copy (vectors).
    pub fn has_f32(&self) -> bool {
        self.f32.is_some()
    }
    /// Whether a tensor of `shape` gets an f32 copy: at most one dimension larger than 1.
    fn wants_f32(shape: &[usize]) -> bool {
        shape.iter().filter(|&&d| d > 1).count() <= 1
    }
}

/// A weight's device copies, read back to the host (`CudaBackend::weight_to_host`).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightCopies {
    /// The fp16 bits, for a weight of two or more dimensions.
    pub f16: Option<Vec<u16>>,
    /// The f32 values, for a weight with at most one dimension larger than 1.
    pub f32: Option<Vec<f32>>,
}

/// Each kernel's parameter sizes from the driver (`cuFuncGetParamInfo`, Driver
/// API "Execution Control", CUDA 12.4+); none when the driver lacks the call.
fn kernel_param_sizes(functions: &HashMap<String, CudaFunction>) -> HashMap<String, Vec<usize>> {
    // SAFETY: a symbol lookup in the loaded driver library.
    let present =
        unsafe { cudarc::driver::sys::culib().get::<unsafe extern "C" fn()>(b"cuFuncGetParamInfo\0").is_ok() };
    if !present {
        return HashMap::new();
    }
    let mut out = HashMap::new();
    for (name, f) in functions {
        let mut sizes = Vec::new();
        loop {
            let (mut offset, mut size) = (0usize, 0usize);
            // SAFETY: a live function handle and two out-parameters; an index
            // past the last parameter returns CUDA_ERROR_INVALID_VALUE.
            let r = unsafe {
                cudarc::driver::sys::cuFuncGetParamInfo(f.cu_function(), sizes.len(), &mut offset, &mut size)
            };
            if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                break;
            }
            sizes.push(size);
        }
        out.insert(name.clone(), sizes);
    }
    out
}

impl CudaBackend {
    /// Opens device `ordinal`, compiles (or loads from the cache) every kernel
    /// and sets up cuBLASLt. Fails with a clear error, never a panic, when a
    /// library or the device is missing.
    pub fn new(ordinal: usize) -> Result<Self> {
        vgpu::activate()?;
        let missing = missing_libraries();
        if !missing.is_empty() {
            return Err(Error::Cuda(format!(
                "cannot load {} (install the NVIDIA driver and the CUDA 12 or 13 libraries, \
                 and put their folder on LD_LIBRARY_PATH)",
                missing.join(", ")
            )));
        }
        // cudarc panics when a symbol is missing (e.g. a driver older than the
        // API it was built for); make that an error too.
        match std::panic::catch_unwind(|| Self::open(ordinal)) {
            Ok(result) => result,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown failure".into());
                Err(Error::Cuda(format!("the CUDA libraries failed to initialise: {msg}")))
            }
        }
    }

    fn open(ordinal: usize) -> Result<Self> {
        cudarc::driver::result::init().map_err(driver_err("no usable NVIDIA driver (cuInit failed)"))?;
        let count = CudaContext::device_count().map_err(driver_err("cannot count CUDA devices"))?;
        if count <= ordinal as i32 {
            return Err(Error::Cuda(if count == 0 {
                "no CUDA device found".into()
            } else {
                format!("no CUDA device {ordinal} (this machine has {count})")
            }));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err(format!("cannot open CUDA device {ordinal}")))?;
        // One stream, raw device pointers: cudarc's multi-stream event tracking has nothing to do.
        // SAFETY: called before any allocation or stream of this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("cannot create a CUDA stream"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("cannot read the compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let mut driver_version = 0;
        // SAFETY: one out-parameter.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(driver_err("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver_err("cannot read the device name"))?,
            arch: arch.clone(),
            memory_bytes: ctx.total_mem().map_err(driver_err("cannot read the device memory size"))?,
            driver_version,
            nvrtc_version: compile::nvrtc_version()?,
            cublaslt_version: Gemm::version(),
        };
        check_library_versions(info.driver_version, info.nvrtc_version, info.cublaslt_version)?;

        let mut functions = HashMap::new();
        for (file, source) in crate::kernels::KERNEL_SOURCES {
            let cubin = compile::cached_cubin(file, source, &arch)?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                .map_err(driver_err(format!("cannot load the cubin of {file}.cu for {arch}")))?;
            for name in compile::kernel_names(source) {
                let f = module.load_function(&name).map_err(driver_err(format!("kernel {name} in {file}.cu")))?;
                functions.insert(name, f);
            }
        }
        let param_sizes = kernel_param_sizes(&functions);
        let gemm = Gemm::new(stream.clone())?;
        Ok(CudaBackend {
            ctx,
            stream,
            functions,
            param_sizes,
            gemm,
            info,
            // The cuBLASLt workspace.
            allocations: AtomicU64::new(1),
            graph_capture: AtomicBool::new(capture::enabled_by_env()),
            f32_activations: AtomicBool::new(f32_activations_by_env()),
            captured_graphs: AtomicU64::new(0),
            capture_failure: std::sync::Mutex::new(None),
        })
    }

    /// Turns CUDA-graph capture of repeated graph parts on or off (default:
    /// on unless `LOVA_CUDA_GRAPHS=0`). Arenas that already hold a captured
    /// graph keep replaying it while capture is on.
    pub fn set_graph_capture(&self, on: bool) {
        self.graph_capture.store(on, Ordering::Relaxed);
    }

    /// Whether `run_repeated` captures CUDA graphs (see `set_graph_capture`).
    pub fn graph_capture(&self) -> bool {
        self.graph_capture.load(Ordering::Relaxed)
    }

    /// Keeps block activations of graphs built from now on in f32 (true) or
    /// fp16 (false, the default unless `LOVA_CUDA_ACTIVATIONS=f32`): the f32
    /// choice is for measuring what fp16 activations save and cost.
    pub fn set_f32_activations(&self, on: bool) {
        self.f32_activations.store(on, Ordering::Relaxed);
    }

    /// How many CUDA graphs this backend has captured (each replayed from then on).
    pub fn captured_graphs(&self) -> u64 {
        self.captured_graphs.load(Ordering::Relaxed)
    }

    /// Why the last failed capture failed (its part then runs with plain launches).
    pub fn capture_failure(&self) -> Option<String> {
        self.capture_failure.lock().map(|f| f.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    fn count_allocation(&self) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
    }

    /// The device this backend runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The device copies of `weight` read back, each `weight.len()` long: lets
    /// tests compare weights uploaded different ways.
    pub fn weight_to_host(&self, weight: &CudaWeight) -> Result<WeightCopies> {
        self.ctx.bind_to_thread().map_err(driver_err("binding the CUDA context"))?;
        let n = weight.len();
        let read = |what| driver_err(format!("reading back the {what} copy of a weight"));
        let f16 = weight.f16.as_ref().map(|d| self.stream.clone_dtoh(d).map_err(read("fp16"))).transpose()?;
        let f32 = weight.f32.as_ref().map(|d| self.stream.clone_dtoh(d).map_err(read("f32"))).transpose()?;
        self.synchronize()?;
        // Drop the one padding element of an empty tensor.
        Ok(WeightCopies { f16: f16.map(|v| v[..n].to_vec()), f32: f32.map(|v| v[..n].to_vec()) })
    }

    /// Waits until all enqueued work is done (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("CUDA stream synchronize"))
    }

    /// A constant table in device memory, uploaded once per arena.
    fn table(&self, arena: &mut CudaArena, values: Vec<u32>) -> Result<CUdeviceptr> {
        if !arena.tables.contains_key(&values) {
            // Only when `prepare` did not know the table (a graph bug): counted,
            // and never inside a capture (no allocation or pageable copy there).
            if capture::is_capturing(&self.stream)? {
                return Err(Error::Cuda("a constant table was not prepared before the capture".into()));
            }
            let dev = self.stream.clone_htod(&values).map_err(driver_err("uploading a constant table"))?;
            self.count_allocation();
            arena.tables.insert(values.clone(), dev);
        }
        let (ptr, _) = arena.tables[&values].device_ptr(&self.stream);
        Ok(ptr)
    }

    fn offsets(&self, arena: &mut CudaArena, s: &Segments) -> Result<CUdeviceptr> {
        let values = s
            .offsets
            .iter()
            .map(|&o| i32::try_from(o).map(|o| o as u32))
            .collect::<std::result::Result<Vec<u32>, _>>()
            .map_err(|_| Error::Limit(format!("a packed batch of {} rows exceeds 2^31 rows", s.total())))?;
        self.table(arena, values)
    }

    /// The device copy of `s`'s row -> sequence map (`row_sequences`), a
    /// constant table like the offsets (uploaded by `prepare`).
    fn row_map(&self, arena: &mut CudaArena, s: &Segments) -> Result<CUdeviceptr> {
        if i32::try_from(s.total()).is_err() {
            return Err(Error::Limit(format!("a packed batch of {} rows exceeds 2^31 rows", s.total())));
        }
        self.table(arena, row_sequences(s))
    }
}

/// The sequence of every row of the packed batch `s`, as the kernels read it
/// (int32 [rows], `elementwise.cu` and the other row-wise kernels): the b with
/// `offsets[b] <= r < offsets[b + 1]`, so empty sequences own no row. One
/// element (0) for a batch of no rows: a table is never empty (the kernels
/// then read nothing).
pub fn row_sequences(s: &Segments) -> Vec<u32> {
    let mut rows = Vec::with_capacity(s.total().max(1));
    for b in 0..s.count() {
        rows.extend(std::iter::repeat_n(b as u32, s.len_of(b)));
    }
    if rows.is_empty() {
        rows.push(0);
    }
    rows
}

/// Environment switch of the block activations' type: `f32` keeps them in f32
/// (as before fp16 activations), anything else (or unset) means fp16.
pub const ACTIVATIONS_ENV: &str = "LOVA_CUDA_ACTIVATIONS";

fn f32_activations_by_env() -> bool {
    std::env::var(ACTIVATIONS_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case("f32"))
}

/// Checks that every tensor an op touches lies inside the arena.
fn check_operands(op: &Op, ctx: &OpContext<'_, CudaBackend>) -> Result<()> {
    let len = ctx.arena.data.len();
    for t in op.reads().into_iter().chain(op.writes()) {
        let r = ctx.plan.range(ctx.graph, t.0);
        if r.end > len {
            return Err(Error::InvalidInput(format!(
                "arena too small for `{}` ({r:?}, arena {len})",
                ctx.graph.desc(t).name
            )));
        }
    }
    Ok(())
}

impl CudaBackend {
    /// Makes a weight of `shape` from its fp16 and/or f32 copies (host slices of
    /// `shape`'s element count), one allocation and one copy each.
    fn upload_copies(&self, shape: &[usize], f16: Option<&[u16]>, f32: Option<&[f32]>) -> Result<CudaWeight> {
        self.ctx.bind_to_thread().map_err(driver_err("binding the CUDA context"))?;
        let f16 = f16.map(|bits| self.upload_padded(bits)).transpose()?;
        let f32 = f32.map(|values| self.upload_padded(values)).transpose()?;
        Ok(CudaWeight { shape: shape.to_vec(), f16, f32 })
    }

    fn upload_padded<T: DeviceRepr + Default>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        // Empty tensors still get one element: a zero-size allocation is an error.
        let dev = if data.is_empty() { self.stream.clone_htod(&[T::default()]) } else { self.stream.clone_htod(data) }
            .map_err(driver_err("uploading a weight"))?;
        self.count_allocation();
        Ok(dev)
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaArena;
    type Weight = CudaWeight;

    fn name(&self) -> String {
        format!("cuda ({}; fp16 weights, {} block activations)", self.info, self.activation_dtype().name())
    }

    /// fp16 (f32 statistics and accumulation inside the kernels), unless set
    /// otherwise (`set_f32_activations`).
    fn activation_dtype(&self) -> DType {
        if self.f32_activations.load(Ordering::Relaxed) { DType::F32 } else { DType::F16 }
    }

    fn alloc(&self, len: usize) -> Result<CudaArena> {
        self.ctx.bind_to_thread().map_err(driver_err("binding the CUDA context"))?;
        let data = self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| {
            Error::Cuda(format!("cannot allocate {} MiB of device memory for the arena: {e:?}", (len * 4) >> 20))
        })?;
        self.count_allocation();
        Ok(CudaArena {
            data,
            staging: Some(Staging::new(&self.ctx)?),
            half: None,
            tables: HashMap::new(),
            rope_tables: HashMap::new(),
            recordings: capture::Recordings::default(),
        })
    }

    fn device_allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Allocates the fp16 GEMM scratch for the largest f32 Linear input, uploads
    /// every segment table (offsets and row -> sequence map), CFG-scale table,
    /// attention tile table and RoPE angle table, makes the cuBLASLt plan of
    /// every GEMM shape and picks its fastest algorithm: after this, no op of
    /// the graph allocates or uploads.
    fn prepare(&self, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_err("binding the CUDA context"))?;
        let g = ctx.graph;
        let mut largest_input = 0;
        for op in &g.ops {
            match op {
                Op::Linear { x, bias, residual, out, .. } => {
                    let (m, k, n) = (g.desc(*x).rows, g.desc(*x).cols, g.desc(*out).cols);
                    // Only an f32 input goes through the fp16 scratch.
                    if g.desc(*x).dtype == DType::F32 {
                        largest_input = largest_input.max(m * k);
                    }
                    if m > 0 && n > 0 && k > 0 {
                        let out_f16 = g.desc(*out).dtype == DType::F16;
                        self.gemm.prepare(m, n, k, bias.is_some(), residual.is_some(), out_f16)?;
                    }
                }
                Op::CfgDenoise { cfg_scales, .. } => {
                    self.table(ctx.arena, cfg_scales.iter().map(|s| s.to_bits()).collect())?;
                }
                // The flash kernel's query-tile table (`attention::tile_starts`) and RoPE angles.
                Op::Attention { q_segments, .. } => {
                    self.table(ctx.arena, attention::tile_starts(g.seg(*q_segments)))?;
                    launch::Launcher::new(self, ctx).prepare_rope_table(op)?;
                }
                _ => {}
            }
        }
        for s in &g.segments {
            self.offsets(ctx.arena, s)?;
            self.row_map(ctx.arena, s)?;
        }
        if largest_input > 0 && ctx.arena.half.as_ref().is_none_or(|h| h.len() < largest_input) {
            let buf = self
                .stream
                .alloc_zeros::<u16>(largest_input)
                .map_err(driver_err("allocating the fp16 GEMM scratch"))?;
            self.count_allocation();
            ctx.arena.half = Some(buf);
        }
        // The fastest of cuBLASLt's candidates per GEMM shape, timed on this
        // graph's operands (`Gemm::tune`; once per shape and backend).
        for op in g.ops.iter().filter(|op| matches!(op, Op::Linear { .. })) {
            launch::Launcher::new(self, ctx).tune_linear(op)?;
        }
        Ok(())
    }

    /// The first call for `ops` runs them plainly (warm-up), the second
    /// captures their launches as a CUDA graph and launches it, later calls
    /// replay it (`capture`). Plain launches when capture is off or failed
    /// once for this arena.
    fn run_repeated(&self, ops: Range<usize>, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_err("binding the CUDA context"))?;
        if self.graph_capture() && !ctx.arena.recordings.failed() {
            self.run_captured(ops, ctx)
        } else {
            self.run_plain(ops, ctx)
        }
    }

    fn upload_weight(&self, tensor: &HostTensor) -> Result<CudaWeight> {
        let f16 = (tensor.shape.len() >= 2)
            .then(|| tensor.data.par_iter().map(|&v| half::f16::from_f32(v).to_bits()).collect::<Vec<u16>>());
        let f32 = CudaWeight::wants_f32(&tensor.shape).then_some(tensor.data.as_slice());
        self.upload_copies(&tensor.shape, f16.as_deref(), f32)
    }

    /// A tensor the source stores as fp16 goes from the file (the mmap) to the
    /// device in one copy: no f32 tensor, no conversion. The stored fp16 values
    /// are exactly what `upload_weight` would make of them (fp16 -> f32 -> fp16
    /// is exact), so both paths give the same device bits. Anything else (an
    /// f32-stored tensor, a vector) takes `upload_weight`.
    fn upload_weight_from(&self, source: &dyn TensorSource, key: &str, shape: &[usize]) -> Result<CudaWeight> {
        if shape.len() >= 2
            && let Some(bits) = source.tensor_f16(key, shape)?
        {
            // `[n, 1]`, `[1, n]`: the f32 copy too, from the same bits (tiny).
            let f32 = CudaWeight::wants_f32(shape)
                .then(|| bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect::<Vec<f32>>());
            return self.upload_copies(shape, Some(&bits), f32.as_deref());
        }
        self.upload_weight(&source.tensor(key, shape)?)
    }

    fn weight_bytes(&self, weight: &CudaWeight) -> usize {
        weight.f16.as_ref().map_or(0, |w| w.len() * 2) + weight.f32.as_ref().map_or(0, |w| w.len() * 4)
    }

    fn weight_len(&self, weight: &CudaWeight) -> usize {
        weight.len()
    }

    fn synchronize(&self) -> Result<()> {
        CudaBackend::synchronize(self)
    }

    fn device_memory_used(&self) -> Option<usize> {
        self.ctx.mem_get_info().ok().map(|(free, total)| total.saturating_sub(free))
    }

    fn device_memory_free(&self) -> Option<usize> {
        self.ctx.mem_get_info().ok().map(|(free, _)| free)
    }

    fn write(&self, buffer: &mut CudaArena, offset: usize, data: &[f32]) -> Result<()> {
        if offset + data.len() > buffer.data.len() {
            return Err(Error::InvalidInput(format!(
                "write of {} values at {offset} is outside the arena",
                data.len()
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        if data.len() <= STAGING_FLOATS
            && let Some(st) = buffer.staging.as_mut()
        {
            let slot = st.next % STAGING_SLOTS;
            st.next += 1;
            // The copy from this slot STAGING_SLOTS writes ago has run.
            st.events[slot].synchronize().map_err(driver_err("waiting for a staging slot"))?;
            // SAFETY: the slot is STAGING_FLOATS floats inside the allocation, and no queued copy reads it.
            let host = unsafe { std::slice::from_raw_parts_mut(st.host.add(slot * STAGING_FLOATS), data.len()) };
            host.copy_from_slice(data);
            let dst = buffer.data.device_ptr(&self.stream).0 + (offset * std::mem::size_of::<f32>()) as CUdeviceptr;
            // SAFETY: dst..+len is inside the arena (checked above); the source
            // stays untouched until the event recorded after the copy.
            unsafe { cudarc::driver::result::memcpy_htod_async(dst, &*host, self.stream.cu_stream()) }
                .map_err(driver_err("copying to the device"))?;
            return st.events[slot].record(&self.stream).map_err(driver_err("recording a staging event"));
        }
        let mut view = buffer.data.slice_mut(offset..offset + data.len());
        self.stream.memcpy_htod(data, &mut view).map_err(driver_err("copying to the device"))
    }

    /// The fp16 bits go through `write` two to a word: the tensor's bytes
    /// from slot `offset` on are the halves in order, as the kernels read them.
    fn write_f16(&self, buffer: &mut CudaArena, offset: usize, data: &[f32]) -> Result<()> {
        let mut bits: Vec<u16> = data.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        bits.resize(data.len().div_ceil(2) * 2, 0);
        let words: Vec<f32> = bits.chunks_exact(2).map(|p| f32::from_bits(p[0] as u32 | (p[1] as u32) << 16)).collect();
        self.write(buffer, offset, &words)
    }

    fn read_f16(&self, buffer: &CudaArena, offset: usize, out: &mut [f32]) -> Result<()> {
        let mut words = vec![0.0f32; out.len().div_ceil(2)];
        self.read(buffer, offset, &mut words)?;
        for (i, v) in out.iter_mut().enumerate() {
            let bits = (words[i / 2].to_bits() >> (16 * (i % 2))) as u16;
            *v = half::f16::from_bits(bits).to_f32();
        }
        Ok(())
    }

    fn read(&self, buffer: &CudaArena, offset: usize, out: &mut [f32]) -> Result<()> {
        if offset + out.len() > buffer.data.len() {
            return Err(Error::InvalidInput(format!("read of {} values at {offset} is outside the arena", out.len())));
        }
        if out.is_empty() {
            return Ok(());
        }
        let view = buffer.data.slice(offset..offset + out.len());
        // A copy to pageable host memory returns once the data is there.
        self.stream.memcpy_dtoh(&view, out).map_err(driver_err("copying from the device"))?;
        self.synchronize()
    }

    fn fill_noise(
        &self,
        buffer: &mut CudaArena,
        offset: usize,
        seed: u64,
        stream: u32,
        latent_len: usize,
        channels: usize,
    ) -> Result<bool> {
        self.philox_normal(buffer, offset, seed, stream, latent_len, channels)?;
        Ok(true)
    }

    /// One line per op: each launcher lives with its kernel file's other
    /// launchers (elementwise, norm, linear, attention, sampler, conv, vision).
    fn run_op(&self, op: &Op, ctx: &mut OpContext<'_, Self>) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_err("binding the CUDA context"))?;
        check_operands(op, ctx)?;
        let mut l = launch::Launcher::new(self, ctx);
        // The ops with fp16 variants check their own operand types.
        if !matches!(
            op,
            Op::Linear { .. }
                | Op::LayerNorm { .. }
                | Op::GatedResidual { .. }
                | Op::SwiGlu { .. }
                | Op::Attention { .. }
        ) {
            l.require_f32(op)?;
        }
        match op {
            Op::Linear { .. } => l.linear(op),
            Op::LayerNorm { .. } => l.layer_norm(op),
            Op::GatedResidual { .. } => l.gated_residual(op),
            Op::Silu { x, out } => l.silu(*x, *out),
            Op::SwiGlu { .. } => l.swiglu(op),
            Op::TimestepFeatures { .. } => l.timestep_features(op),
            Op::AddPositional { .. } => l.add_positional(op),
            Op::PrependRow { .. } => l.prepend_row(op),
            Op::PrependRowPositional { .. } => l.prepend_row_positional(op),
            Op::DropFirstRow { .. } => l.drop_first_row(op),
            Op::Attention { .. } => l.attention(op),
            Op::CfgExpand { .. } => l.cfg_expand(op),
            Op::CfgDenoise { .. } => l.cfg_denoise(op),
            Op::Dpmpp3mUpdate { .. } => l.dpmpp_3m_update(op),
            Op::SelectStepRow { .. } => l.select_step_row(op),
            Op::Conv1d { .. } => l.conv1d(op),
            Op::ConvTranspose1d { .. } => l.conv_transpose1d(op),
            Op::SnakeBeta { .. } => l.snake_beta(op),
            Op::Patchify { .. } => l.patchify(op),
            Op::PrependWeightRow { .. } => l.prepend_weight_row(op),
            Op::QuickGelu { x, out } => l.quick_gelu(*x, *out),
            Op::FirstRows { .. } => l.first_rows(op),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_library_versions;

    #[test]
    fn libraries_newer_than_the_driver_are_refused_with_both_versions() {
        assert!(check_library_versions(13000, (13, 0), 130000).is_ok());
        assert!(check_library_versions(13020, (12, 8), 120805).is_ok(), "older libraries run on a newer driver");
        assert!(check_library_versions(12080, (12, 9), 120900).is_ok(), "minor versions are compatible");
        let e = check_library_versions(12080, (13, 0), 120900).unwrap_err().to_string();
        assert!(e.contains("NVRTC 13.0") && e.contains("CUDA 12.8"), "{e}");
        let e = check_library_versions(12080, (12, 8), 130100).unwrap_err().to_string();
        assert!(e.contains("cuBLASLt 13.1.0") && e.contains("CUDA 12.8"), "{e}");
    }
}
