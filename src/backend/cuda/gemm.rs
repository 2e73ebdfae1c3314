//! `out = x @ w^T (+ bias) (+ residual)` through cuBLASLt: fp16 operands, fp32
//! accumulation, an f32 or fp16 output, the bias in the epilogue and the
//! residual as cuBLASLt's `C` (`D = A B + 1 * C`, with C and D different
//! buffers of D's type, as cuBLASLt requires). The bias is f32 whatever D is:
//! with an fp16 D the descriptor says so (`CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE`,
//! whose default is D's type); where the heuristic then offers no algorithm,
//! the bias goes to a separate kernel as for any unfused bias.
//!
//! Row-major to cuBLAS' column-major: row-major `W [N, K]` is column-major
//! `[K x N]` (ld K), row-major `X [M, K]` is `[K x M]` (ld K), row-major
//! `out [M, N]` is `[N x M]` (ld N); so `out^T = op_T(W) * X`, i.e. cuBLAS
//! m = N, n = M, k = K with A = W transposed, B = X, and the bias (one value
//! per output feature) runs along cuBLAS' rows, which is what the BIAS
//! epilogue adds.
//!
//! Descriptors and the heuristic's algorithms are made once per shape and kept
//! (a step graph has a dozen distinct shapes), so a GEMM costs one launch.
//! The heuristic's first choice is not always the fastest: `tune` times its
//! top `TUNE_CANDIDATES` on the op's own operands (from `Backend::prepare`,
//! never inside a captured step) and keeps the fastest for the shape.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::error::{Error, Result};

/// cuBLASLt's recommended workspace on Hopper (enough for every other arch).
const WORKSPACE_BYTES: usize = 32 << 20;
/// `CUBLAS_OP_T` (cublasOperation_t is not in cudarc's cublaslt bindings).
const OP_T: i32 = 1;
/// Algorithms asked of the heuristic per shape, timed by `tune`.
const TUNE_CANDIDATES: usize = 4;
/// Timed runs per candidate (after one warm-up run).
const TUNE_RUNS: usize = 5;

fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> Error + '_ {
    move |e| Error::Cuda(format!("cuBLASLt {what}: {e:?}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GemmKey {
    m: usize,
    n: usize,
    k: usize,
    bias: bool,
    residual: bool,
    /// D (and C) fp16 rather than f32.
    out_f16: bool,
}

impl GemmKey {
    fn of(a: &GemmArgs) -> Self {
        GemmKey { m: a.m, n: a.n, k: a.k, bias: a.bias.is_some(), residual: a.residual.is_some(), out_f16: a.out_f16 }
    }
}

struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(dtype: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> Result<Self> {
        lt::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64)
            .map(Layout)
            .map_err(lt_err("matrix layout"))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Plan {
    desc: Desc,
    w: Layout,
    x: Layout,
    out: Layout,
    /// The algorithm runs use: the heuristic's first, or after `tune` the fastest candidate.
    algo: sys::cublasLtMatmulAlgo_t,
    /// The heuristic's algorithms, best first (at most `TUNE_CANDIDATES`).
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
    /// Whether `tune` has chosen among the candidates.
    tuned: bool,
    /// False when cuBLASLt had no algorithm with the bias epilogue for this
    /// shape: the bias is then added by a separate kernel.
    fused_bias: bool,
}

// SAFETY: the descriptors are plain host-side structures; they are used under
// the `plans` mutex only.
unsafe impl Send for Plan {}

/// The device pointers of one GEMM.
pub struct GemmArgs {
    /// fp16 `[M, K]`, row-major.
    pub x: CUdeviceptr,
    /// fp16 `[N, K]`, row-major (PyTorch Linear layout).
    pub w: CUdeviceptr,
    /// f32 `[N]`.
    pub bias: Option<CUdeviceptr>,
    /// `[M, N]`, of the output's type.
    pub residual: Option<CUdeviceptr>,
    /// `[M, N]`, f32 or (`out_f16`) fp16.
    pub out: CUdeviceptr,
    pub out_f16: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: Mutex<HashMap<GemmKey, Plan>>,
}

// SAFETY: the handle is used from one stream and cuBLASLt handles are
// thread-safe for use with distinct descriptors; descriptors live under a mutex.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.get_mut().map(|p| p.clear()).ok();
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let handle = lt::create_handle().map_err(lt_err("create handle"))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| Error::Cuda(format!("cannot allocate the cuBLASLt workspace: {e:?}")))?;
        Ok(Gemm { handle, workspace, stream, plans: Mutex::new(HashMap::new()) })
    }

    /// cuBLASLt's version number (e.g. 130000 for 13.0.0).
    pub fn version() -> usize {
        // SAFETY: no arguments.
        unsafe { sys::cublasLtGetVersion() }
    }

    fn plan(&self, key: GemmKey) -> Result<Plan> {
        let (r16, r32) = (sys::cudaDataType::CUDA_R_16F, sys::cudaDataType::CUDA_R_32F);
        let w = Layout::new(r16, key.k, key.n, key.k)?;
        let x = Layout::new(r16, key.k, key.m, key.k)?;
        let out = Layout::new(if key.out_f16 { r16 } else { r32 }, key.n, key.m, key.n)?;
        let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
        let result = (|| {
            // SAFETY: pref is live; the attribute is a usize.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &WORKSPACE_BYTES as *const usize as *const c_void,
                    size_of::<usize>(),
                )
            }
            .map_err(lt_err("workspace preference"))?;
            let fused_options: &[bool] = if key.bias { &[true, false] } else { &[false] };
            let mut last_err = None;
            for &fused_bias in fused_options {
                let desc = Desc(
                    lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, r32)
                        .map_err(lt_err("matmul descriptor"))?,
                );
                let epilogue = if fused_bias {
                    sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
                } else {
                    sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
                };
                // SAFETY: desc is live; the attributes are an i32, a cublasLtEpilogue_t (u32)
                // and a cudaDataType (u32).
                unsafe {
                    lt::set_matmul_desc_attribute(
                        desc.0,
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                        &OP_T as *const i32 as *const c_void,
                        size_of::<i32>(),
                    )
                    .map_err(lt_err("transpose attribute"))?;
                    lt::set_matmul_desc_attribute(
                        desc.0,
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                        &epilogue as *const sys::cublasLtEpilogue_t as *const c_void,
                        size_of::<sys::cublasLtEpilogue_t>(),
                    )
                    .map_err(lt_err("epilogue attribute"))?;
                    if fused_bias && key.out_f16 {
                        lt::set_matmul_desc_attribute(
                            desc.0,
                            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                            &r32 as *const sys::cudaDataType as *const c_void,
                            size_of::<sys::cudaDataType>(),
                        )
                        .map_err(lt_err("bias type attribute"))?;
                    }
                }
                // SAFETY: all descriptors are live.
                match unsafe { heuristic_algos(self.handle, desc.0, w.0, x.0, out.0, pref) } {
                    Ok(algos) => return Ok((desc, algos, fused_bias)),
                    Err(e) => last_err = Some(e),
                }
            }
            Err(Error::Cuda(format!(
                "cuBLASLt has no fp16 GEMM algorithm for out[{}, {}] = x[{}, {}] @ w^T ({:?})",
                key.m, key.n, key.m, key.k, last_err
            )))
        })();
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        let (desc, candidates, fused_bias) = result?;
        Ok(Plan { desc, w, x, out, algo: candidates[0], candidates, tuned: false, fused_bias })
    }

    /// Makes (and keeps) the plan of a GEMM shape ahead of its first run, so
    /// that runs only look plans up (`Backend::prepare`).
    pub fn prepare(&self, m: usize, n: usize, k: usize, bias: bool, residual: bool, out_f16: bool) -> Result<()> {
        let key = GemmKey { m, n, k, bias, residual, out_f16 };
        let mut plans = self.plans.lock().map_err(|_| Error::Cuda("GEMM plan cache poisoned".into()))?;
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(key) {
            e.insert(self.plan(key)?);
        }
        Ok(())
    }

    /// Enqueues the GEMM on the stream. Returns true when the bias still has to
    /// be added (no fused-bias algorithm for this shape).
    pub fn run(&self, a: &GemmArgs) -> Result<bool> {
        if a.m == 0 || a.n == 0 {
            return Ok(false);
        }
        let key = GemmKey::of(a);
        let mut plans = self.plans.lock().map_err(|_| Error::Cuda("GEMM plan cache poisoned".into()))?;
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        let algo = plan.algo;
        self.matmul(plan, &algo, a)?;
        Ok(a.bias.is_some() && !plan.fused_bias)
    }

    /// Times each of the heuristic's candidates for `a`'s shape (one warm-up
    /// run, then `TUNE_RUNS` between two events) and keeps the fastest for
    /// every later run of the shape; once per shape. A candidate that fails
    /// to run is skipped. With one candidate there is nothing to time.
    pub fn tune(&self, a: &GemmArgs) -> Result<()> {
        if a.m == 0 || a.n == 0 {
            return Ok(());
        }
        let key = GemmKey::of(a);
        let mut plans = self.plans.lock().map_err(|_| Error::Cuda("GEMM plan cache poisoned".into()))?;
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        if plan.tuned || plan.candidates.len() < 2 {
            plan.tuned = true;
            return Ok(());
        }
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ctx = self.stream.context();
        let event_err = |e| Error::Cuda(format!("timing cuBLASLt's candidate algorithms: {e:?}"));
        let (start, end) = (ctx.new_event(timed).map_err(event_err)?, ctx.new_event(timed).map_err(event_err)?);
        let mut best: Option<(f32, sys::cublasLtMatmulAlgo_t)> = None;
        for algo in plan.candidates.clone() {
            if self.matmul(plan, &algo, a).is_err() {
                continue;
            }
            start.record(&self.stream).map_err(event_err)?;
            for _ in 0..TUNE_RUNS {
                self.matmul(plan, &algo, a)?;
            }
            end.record(&self.stream).map_err(event_err)?;
            let ms = start.elapsed_ms(&end).map_err(event_err)?;
            // Ties keep the earlier candidate: the heuristic's order.
            if best.is_none_or(|(fastest, _)| ms < fastest) {
                best = Some((ms, algo));
            }
        }
        if let Some((_, algo)) = best {
            plan.algo = algo;
        }
        plan.tuned = true;
        Ok(())
    }

    /// Enqueues one GEMM of `plan`'s shape with algorithm `algo`.
    fn matmul(&self, plan: &Plan, algo: &sys::cublasLtMatmulAlgo_t, a: &GemmArgs) -> Result<()> {
        if let (Some(bias), true) = (a.bias, plan.fused_bias) {
            // SAFETY: desc is live; the attribute is a device pointer.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc.0,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias as *const CUdeviceptr as *const c_void,
                    size_of::<CUdeviceptr>(),
                )
            }
            .map_err(lt_err("bias pointer"))?;
        }
        let (alpha, beta) = (1.0f32, if a.residual.is_some() { 1.0f32 } else { 0.0 });
        let c = a.residual.unwrap_or(a.out);
        let (workspace, _sync) = self.workspace.device_ptr(&self.stream);
        // SAFETY: pointers come from live device allocations of the sizes the
        // layouts describe (checked by the caller); everything runs on `stream`.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                a.w as *const c_void,
                plan.w.0,
                a.x as *const c_void,
                plan.x.0,
                c as *const c_void,
                plan.out.0,
                a.out as *mut c_void,
                plan.out.0,
                algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLASLt matmul out[{}, {}] = x[{}, {}] @ w^T: {e:?}", a.m, a.n, a.m, a.k)))
    }
}

/// Up to `TUNE_CANDIDATES` algorithms cuBLASLt's heuristic offers for a GEMM
/// (C and D share the `out` layout), best first; NOT_SUPPORTED when none.
///
/// # Safety
/// Every descriptor must be live.
unsafe fn heuristic_algos(
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    w: sys::cublasLtMatrixLayout_t,
    x: sys::cublasLtMatrixLayout_t,
    out: sys::cublasLtMatrixLayout_t,
    pref: sys::cublasLtMatmulPreference_t,
) -> std::result::Result<Vec<sys::cublasLtMatmulAlgo_t>, lt::CublasError> {
    // SAFETY: a plain C struct of integers and byte arrays: all-zero is a valid value.
    let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
        (0..TUNE_CANDIDATES).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut count = 0;
    // SAFETY: `results` holds TUNE_CANDIDATES entries for the library to fill.
    unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc,
            w,
            x,
            out,
            out,
            pref,
            TUNE_CANDIDATES as i32,
            results.as_mut_ptr(),
            &mut count,
        )
    }
    .result()?;
    let algos: Vec<_> = results
        .iter()
        .take(count.max(0) as usize)
        .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
        .map(|r| r.algo)
        .collect();
    if algos.is_empty() {
        return Err(lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED));
    }
    Ok(algos)
}
