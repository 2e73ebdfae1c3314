//! Kernel compilation: NVRTC turns each embedded `kernels/*.cu` file into a
//! cubin for one architecture (`sm_90`, ...). Cubins are cached on disk, keyed
//! by the source, the options, the architecture and the NVRTC version, so a
//! start after the first costs no compilation.
//!
//! Needs only NVRTC (`libnvrtc.so.12` or `.13`), not a GPU: `lova-fast kernels
//! --check` compiles everything here and reports registers and spills from
//! ptxas' verbose output. The kernels include no CUDA header; when the CUDA
//! include folder is found (`LOVA_CUDA_INCLUDE`, `$CUDA_HOME/include`, or the
//! `include` folder beside the loaded `libnvrtc`) it is passed anyway, so that
//! a kernel may include `cuda_fp16.h` later.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::error::{Error, Result};

/// Options every kernel is compiled with (besides the architecture).
const BASE_OPTIONS: &[&str] = &["--std=c++17", "-default-device"];

/// Checks that NVRTC can be loaded, with an error that says how to provide it.
pub fn require_nvrtc() -> Result<()> {
    // SAFETY: only tries to dlopen the library by its usual names.
    if unsafe { nvrtc_sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Cuda(
            "NVRTC (libnvrtc.so.13 or .12) not found: install the CUDA toolkit or \
             `pip install nvidia-cuda-nvrtc`, and put the folder holding libnvrtc.so.* on LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// The CUDA include folder, if one is found (see the module doc).
pub fn cuda_include_dir() -> Option<PathBuf> {
    let has_headers = |p: &Path| p.join("cuda_fp16.h").is_file();
    if let Some(dir) = std::env::var_os("LOVA_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir)).filter(|p| has_headers(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = PathBuf::from(home).join("include");
            if has_headers(&p) {
                return Some(p);
            }
        }
    }
    // Beside the libnvrtc this process loaded: pip's nvidia/cu13/{lib,include},
    // the toolkit's lib64 -> include, targets/<arch>/lib -> include.
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        for line in maps.lines() {
            let Some(path) = line.split_whitespace().nth(5) else { continue };
            if path.contains("libnvrtc.so") {
                let include = Path::new(path).parent()?.parent()?.join("include");
                if has_headers(&include) {
                    return Some(include);
                }
            }
        }
    }
    Some(PathBuf::from("/usr/local/cuda/include")).filter(|p| has_headers(p))
}

/// One kernel file compiled for one architecture.
pub struct Compiled {
    /// The cubin NVRTC produced.
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings, and ptxas' report when asked for).
    pub log: String,
}

/// Compiles one kernel file to a cubin for `arch` (e.g. `sm_90`).
pub fn compile(name: &str, source: &str, arch: &str, ptxas_verbose: bool) -> Result<Compiled> {
    require_nvrtc()?;
    let source = crate::kernels::expand_common(name, source);
    let src = CString::new(source).map_err(|_| Error::Cuda(format!("kernel {name}.cu contains a NUL byte")))?;
    let file = CString::new(format!("{name}.cu")).expect("kernel names have no NUL");
    let mut options: Vec<String> = BASE_OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    if ptxas_verbose {
        options.push("--ptxas-options=-v".into());
    }
    if let Some(include) = cuda_include_dir() {
        options.push(format!("--include-path={}", include.display()));
    }
    let prog = nvrtc::create_program(&src, Some(&file))
        .map_err(|e| Error::Cuda(format!("NVRTC cannot create a program for {name}.cu: {e:?}")))?;
    // SAFETY: `prog` is live until destroy_program below; src and file outlive it.
    let result = unsafe {
        let compiled = nvrtc::compile_program(prog, &options);
        let log = nvrtc::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        match compiled {
            Err(e) => Err(Error::Cuda(format!("NVRTC failed to compile {name}.cu for {arch} ({e:?}):\n{log}"))),
            Ok(()) => {
                let mut size = 0usize;
                let cubin = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result().and_then(|()| {
                    let mut cubin = vec![0u8; size];
                    nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut _).result().map(|()| cubin)
                });
                match cubin {
                    Ok(cubin) if !cubin.is_empty() => Ok(Compiled { cubin, log }),
                    Ok(_) => Err(Error::Cuda(format!(
                        "NVRTC produced no cubin for {name}.cu (architecture {arch} must be a real sm_XX)"
                    ))),
                    Err(e) => Err(Error::Cuda(format!("NVRTC cannot return the cubin of {name}.cu: {e:?}"))),
                }
            }
        }
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

/// FNV-1a, 64 bits: a hash that is the same in every build (unlike std's).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where compiled kernels are cached: `$LOVA_FAST_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/lova-fast`, else `~/.cache/lova-fast`.
pub fn cache_dir() -> Option<PathBuf> {
    let nonempty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    if let Some(dir) = std::env::var_os("LOVA_FAST_CACHE_DIR").and_then(nonempty) {
        return Some(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").and_then(nonempty) {
        return Some(dir.join("lova-fast"));
    }
    std::env::var_os("HOME").and_then(nonempty).map(|h| h.join(".cache").join("lova-fast"))
}

/// The cubin of kernel file `name` for `arch`: from the disk cache, or compiled
/// (and then cached; a cache that cannot be written only costs a recompile).
pub fn cached_cubin(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    let (major, minor) = nvrtc_version()?;
    // The key covers the shared header too: a change there recompiles every file.
    let expanded = crate::kernels::expand_common(name, source);
    let key = fnv1a(&[expanded.as_bytes(), arch.as_bytes(), BASE_OPTIONS.join(" ").as_bytes()]);
    let file = format!("{name}-{arch}-nvrtc{major}.{minor}-{key:016x}.cubin");
    let dir = cache_dir();
    if let Some(path) = dir.as_ref().map(|d| d.join(&file))
        && let Ok(bytes) = std::fs::read(&path)
        && !bytes.is_empty()
    {
        return Ok(bytes);
    }
    let compiled = compile(name, source, arch, false)?;
    if let Some(dir) = dir
        && std::fs::create_dir_all(&dir).is_ok()
    {
        let tmp = dir.join(format!("{file}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, &compiled.cubin).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(&file));
        }
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(compiled.cubin)
}

/// The `extern "C" __global__` function names defined in a kernel source.
pub fn kernel_names(source: &str) -> Vec<String> {
    let last_ident = |s: &str| -> String {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_')).rfind(|s| !s.is_empty()).unwrap_or_default().to_string()
    };
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("__global__") {
        rest = &rest[i + "__global__".len()..];
        // The name is the identifier before the first '(' that does not open
        // `__launch_bounds__(...)`; a `__global__` in a comment has no `void` there.
        let mut at = 0;
        let name = loop {
            let Some(paren) = rest[at..].find('(').map(|p| at + p) else { break None };
            let ident = last_ident(&rest[at..paren]);
            if ident == "__launch_bounds__" {
                match rest[paren..].find(')') {
                    Some(close) => at = paren + close + 1,
                    None => break None,
                }
            } else {
                break Some((ident, &rest[..paren]));
            }
        };
        if let Some((name, head)) = name
            && head.contains("void")
            && !head.contains(';')
            && !name.is_empty()
        {
            names.push(name);
        }
    }
    names
}

/// Resource use of one kernel, from ptxas' verbose report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelUsage {
    /// The kernel's (mangled or extern "C") name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory in bytes (dynamic shared memory is set at launch).
    pub shared_bytes: u32,
    /// Stack frame per thread in bytes.
    pub stack_bytes: u32,
    /// Bytes of register spill stores (0 for the hot kernels).
    pub spill_store_bytes: u32,
    /// Bytes of register spill loads.
    pub spill_load_bytes: u32,
}

/// Parses ptxas' `-v` report:
/// ```text
/// ptxas info    : Compiling entry function 'silu_f32' for 'sm_90'
/// ptxas info    : Function properties for silu_f32
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 10 registers, used 0 barriers, 384 bytes cmem[0]
/// ```
/// (`N bytes smem` appears in the `Used` line when the kernel has static shared memory.)
pub fn parse_ptxas_report(log: &str) -> Vec<KernelUsage> {
    let number_before = |line: &str, unit: &str| -> Option<u32> {
        let i = line.find(unit)?;
        line[..i].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    let mut kernels: Vec<KernelUsage> = Vec::new();
    for line in log.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let name = &line[i + "Compiling entry function '".len()..];
            let name = name.split('\'').next().unwrap_or_default();
            kernels.push(KernelUsage { name: name.to_string(), ..Default::default() });
            continue;
        }
        let Some(k) = kernels.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, " bytes stack frame").unwrap_or(0);
            k.spill_store_bytes = number_before(line, " bytes spill stores").unwrap_or(0);
            k.spill_load_bytes = number_before(line, " bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains(" registers") {
            k.registers = number_before(line, " registers").unwrap_or(0);
            k.shared_bytes = number_before(line, " bytes smem").unwrap_or(0);
        }
    }
    kernels
}

/// Compiles every embedded kernel file for `arch` with ptxas' report: one entry
/// per file, `Ok(usage per kernel)` or the compile error.
pub fn check_all(arch: &str) -> Vec<(&'static str, Result<Vec<KernelUsage>>)> {
    crate::kernels::KERNEL_SOURCES
        .iter()
        .map(|(name, source)| (*name, compile(name, source, arch, true).map(|c| parse_ptxas_report(&c.log))))
        .collect()
}

/// `lova-fast kernels --check`: compiles every kernel file for each architecture
/// and returns the report (one line per kernel: registers, static shared
/// memory, stack, spills) and the number of files that failed to compile.
pub fn check_report(arches: &[String]) -> Result<(String, usize)> {
    use std::fmt::Write;
    let mut out = String::new();
    let mut failures = 0;
    let (major, minor) = nvrtc_version()?;
    let _ = writeln!(out, "NVRTC {major}.{minor}");
    match cuda_include_dir() {
        Some(dir) => {
            let _ = writeln!(out, "CUDA headers: {} (passed as --include-path)", dir.display());
        }
        None => {
            let _ = writeln!(out, "CUDA headers: none found (the kernels need none)");
        }
    }
    for arch in arches {
        let _ = writeln!(out, "\n{arch}");
        let _ = writeln!(
            out,
            "  {:<20} {:<22} {:>5} {:>10} {:>7} {:>12} {:>11}",
            "file", "kernel", "regs", "smem (B)", "stack", "spill st (B)", "spill ld (B)"
        );
        for (file, result) in check_all(arch) {
            match result {
                Ok(kernels) => {
                    for k in kernels {
                        let _ = writeln!(
                            out,
                            "  {:<20} {:<22} {:>5} {:>10} {:>7} {:>12} {:>11}{}",
                            format!("{file}.cu"),
                            k.name,
                            k.registers,
                            k.shared_bytes,
                            k.stack_bytes,
                            k.spill_store_bytes,
                            k.spill_load_bytes,
                            if k.spill_store_bytes + k.spill_load_bytes > 0 { "  SPILLS" } else { "" }
                        );
                    }
                }
                Err(e) => {
                    failures += 1;
                    let _ = writeln!(out, "  {file}.cu: FAILED\n{e}");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\nsmem is static shared memory; attention_f32 also takes dynamic shared memory at launch:\n\
         (32 (head_dim + 1) + 48 head_dim + 128) floats, 20.6 KiB at head_dim 64, 40.6 KiB at 128.\n\
         flash_attention_hd64 (128 threads) is capped at 128 registers for 4 blocks (16 warps) per SM."
    );
    Ok((out, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kernel_names() {
        let src = "// __global__ in a comment (\n extern \"C\" __global__ void a_b(int x) {}\n\
                   extern \"C\" __global__ void __launch_bounds__(128) c2(\n float* y) {}";
        // The comment's `__global__` is followed by no `void` before its `(`.
        assert_eq!(kernel_names(src), vec!["a_b".to_string(), "c2".to_string()]);
    }

    #[test]
    fn every_embedded_kernel_file_defines_kernels() {
        for (name, src) in crate::kernels::KERNEL_SOURCES {
            assert!(!kernel_names(src).is_empty(), "{name}.cu defines no kernel");
            assert!(src.trim_start().starts_with("//"), "{name}.cu must open with a comment saying what it computes");
        }
    }

    #[test]
    fn parses_the_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'silu_f32' for 'sm_90'\n\
                   ptxas info    : Function properties for silu_f32\n\
                   \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                   ptxas info    : Used 10 registers, used 0 barriers, 384 bytes cmem[0]\n\
                   ptxas info    : Compiling entry function 'attn' for 'sm_90'\n\
                   ptxas info    : Function properties for attn\n\
                   \x20   24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 168 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]\n";
        let k = parse_ptxas_report(log);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0], KernelUsage { name: "silu_f32".into(), registers: 10, shared_bytes: 0, ..Default::default() });
        assert_eq!(
            k[1],
            KernelUsage {
                name: "attn".into(),
                registers: 168,
                shared_bytes: 4096,
                stack_bytes: 24,
                spill_store_bytes: 8,
                spill_load_bytes: 12
            }
        );
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
