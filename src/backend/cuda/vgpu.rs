//! The virtual GPU (`LOVA_VGPU=1`): a CPU implementation of the CUDA driver
//! API and of cuBLASLt (`tools/vgpu/`), loaded in place of `libcuda.so` and
//! `libcublasLt.so` so that the unchanged backend, through cudarc, runs its
//! kernels' sources and GEMMs on the CPU. NVRTC stays the real one: every
//! kernel is still compiled to a cubin, which the virtual driver reads for
//! each kernel's parameters, launch bounds and shared memory.
//!
//! How it takes the place of the real libraries: cudarc opens them with
//! `dlopen("libcuda.so")` (then `libcuda.so.1`, ...) and `dlopen("libcublasLt.so")`
//! on first use. The virtual libraries carry exactly those sonames, and the
//! dynamic loader answers a `dlopen` by name with an already loaded library of
//! that soname; so loading them by path first is enough, and it must happen
//! before cudarc's first call (`activate`, from `CudaBackend::new` and
//! `missing_libraries`).
//!
//! Never by default (only `LOVA_VGPU=1`), and never in place of a real GPU:
//! when the real driver loads and reports a device, the variable is ignored
//! with a note.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The variable that asks for the virtual GPU.
pub const ENV: &str = "LOVA_VGPU";
/// A folder holding a built `libcuda.so` and `libcublasLt.so` of the virtual
/// GPU (else they are built on first use into the kernel cache folder).
pub const ENV_DIR: &str = "LOVA_VGPU_DIR";

/// Whether `LOVA_VGPU=1`.
pub fn requested() -> bool {
    std::env::var(ENV).is_ok_and(|v| v.trim() == "1")
}

static ACTIVATED: OnceLock<std::result::Result<bool, String>> = OnceLock::new();

/// Loads the virtual GPU when `LOVA_VGPU=1` and no real GPU is present; true
/// when it is in use. Idempotent; the first outcome is kept.
pub fn activate() -> Result<bool> {
    ACTIVATED.get_or_init(load).clone().map_err(Error::Cuda)
}

/// Whether the virtual GPU is in use.
pub fn active() -> bool {
    matches!(ACTIVATED.get(), Some(Ok(true)))
}

fn load() -> std::result::Result<bool, String> {
    if !requested() {
        return Ok(false);
    }
    if real_gpu_present() {
        eprintln!("note: {ENV}=1 ignored: a real CUDA device is present and is used instead");
        return Ok(false);
    }
    let dir = match std::env::var_os(ENV_DIR) {
        Some(dir) => PathBuf::from(dir),
        None => build()?,
    };
    for lib in ["libcuda.so", "libcublasLt.so"] {
        let path = dir.join(lib);
        // SAFETY: our own library; its initialisers only register kernels.
        let handle = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load the virtual GPU's {}: {e}", path.display()))?;
        // Kept loaded for the life of the process, so that cudarc's dlopen by
        // soname finds it.
        std::mem::forget(handle);
    }
    Ok(true)
}

/// Whether the real driver loads and reports at least one device.
fn real_gpu_present() -> bool {
    // SAFETY: the real driver's own entry points, called as documented.
    unsafe {
        let Ok(lib) = libloading::Library::new("libcuda.so.1") else { return false };
        let (Ok(init), Ok(count)) = (
            lib.get::<unsafe extern "C" fn(u32) -> i32>(b"cuInit\0"),
            lib.get::<unsafe extern "C" fn(*mut i32) -> i32>(b"cuDeviceGetCount\0"),
        ) else {
            return false;
        };
        let mut n = 0;
        init(0) == 0 && count(&mut n) == 0 && n > 0
    }
}

/// Builds the virtual GPU from this checkout's `tools/vgpu` and `kernels`
/// (reusing an earlier build of the same sources) and returns its folder.
fn build() -> std::result::Result<PathBuf, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/vgpu/build.sh");
    if !script.is_file() {
        return Err(format!(
            "{ENV}=1 needs the virtual GPU's sources ({} is missing): set {ENV_DIR} to a built copy",
            script.display()
        ));
    }
    let out = super::compile::cache_dir().unwrap_or_else(std::env::temp_dir).join("vgpu");
    let result = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !result.status.success() {
        return Err(format!("building the virtual GPU failed ({}; its errors are above)", script.display()));
    }
    let stdout = String::from_utf8_lossy(&result.stdout);
    let dir = stdout.lines().last().unwrap_or_default().trim();
    if dir.is_empty() {
        return Err(format!("{} printed no folder", script.display()));
    }
    Ok(PathBuf::from(dir))
}

/// A function the virtual GPU exports for tests (not part of CUDA).
fn hook<T: Copy>(file: &str, name: &[u8]) -> Result<T> {
    if !active() {
        return Err(Error::Cuda("the virtual GPU is not in use".into()));
    }
    // SAFETY: the virtual GPU's library, already loaded (so opened by soname);
    // `T` is the function's type as declared in tools/vgpu.
    unsafe {
        let lib = libloading::Library::new(file).map_err(|e| Error::Cuda(format!("{file}: {e}")))?;
        let f = *lib.get::<T>(name).map_err(|e| Error::Cuda(format!("{file}: {e}")))?;
        // Stays loaded: the handle above is one more reference to it.
        std::mem::forget(lib);
        Ok(f)
    }
}

/// How many times the virtual GPU has run kernel `name` (counts all backends
/// of the process).
pub fn launches(name: &str) -> Result<u64> {
    let f: unsafe extern "C" fn(*const std::ffi::c_char) -> u64 = hook("libcuda.so", b"vgpuLaunches\0")?;
    let name = std::ffi::CString::new(name).map_err(|_| Error::InvalidInput("kernel name with a NUL".into()))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    Ok(unsafe { f(name.as_ptr()) })
}

/// How many `cublasLtMatmul` calls the virtual cuBLASLt has taken.
pub fn matmuls() -> Result<u64> {
    let f: unsafe extern "C" fn() -> u64 = hook("libcublasLt.so", b"vgpuMatmuls\0")?;
    // SAFETY: takes nothing.
    Ok(unsafe { f() })
}

/// Makes the virtual cuBLASLt offer no algorithm with the bias epilogue (as a
/// library without one for a shape would), for GEMM plans made from now on.
pub fn withhold_bias_epilogue(on: bool) -> Result<()> {
    let f: unsafe extern "C" fn(i32) = hook("libcublasLt.so", b"vgpuWithholdBiasEpilogue\0")?;
    // SAFETY: takes an int.
    unsafe { f(on as i32) };
    Ok(())
}
