//! CUDA kernel sources (`kernels/*.cu`), embedded at build time by `build.rs`
//! as `(file stem, source)` pairs. The CUDA backend compiles them with NVRTC
//! for the device's architecture on first use.
//! `lova-fast kernels --check` compiles them all without a GPU (see
//! `backend::cuda::compile`).

/// The file `build.rs` generates, kept private so that the public constant
/// below can carry the documentation.
mod generated {
    include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
}

/// Every `kernels/*.cu` file as `(file stem, source)`, sorted by file stem.
pub const KERNEL_SOURCES: &[(&str, &str)] = generated::KERNEL_SOURCES;

/// `kernels/common.cuh`: helpers the kernel files share (`GRID_STRIDE`,
/// `sequence_of_row`, `warp_sum`, the fp16 conversions `f32_to_f16_rn` /
/// `f16_to_f32` / `pack_half2`, the tensor-core `mma_16816`), pulled in by the
/// line `#include "common.cuh"`.
pub const COMMON_HEADER: &str = include_str!("../kernels/common.cuh");
const COMMON_INCLUDE: &str = "#include \"common.cuh\"";

/// Kernel file `name`'s `source` as NVRTC compiles it: its `#include "common.cuh"`
/// line replaced by the header (NVRTC is given no files), between `#line`
/// directives so that compiler messages still name the right file and line.
pub fn expand_common(name: &str, source: &str) -> String {
    let mut out = String::with_capacity(source.len() + COMMON_HEADER.len() + 64);
    for (i, line) in source.lines().enumerate() {
        if line.trim() == COMMON_INCLUDE {
            out.push_str("#line 1 \"common.cuh\"\n");
            out.push_str(COMMON_HEADER);
            out.push_str(&format!("\n#line {} \"{name}.cu\"\n", i + 2));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The source of kernel file `name` (without `.cu`).
pub fn source(name: &str) -> Option<&'static str> {
    KERNEL_SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cu_file_is_embedded_verbatim() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        on_disk.sort();
        let embedded: Vec<(String, String)> =
            KERNEL_SOURCES.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        assert_eq!(embedded, on_disk);
        for (name, src) in &on_disk {
            assert_eq!(source(name), Some(src.as_str()));
        }
        assert_eq!(source("no_such_kernel"), None);
    }

    #[test]
    fn the_common_header_replaces_its_include_line() {
        let src = "// k\n#include \"common.cuh\"\nint after;\n";
        let out = expand_common("k", src);
        assert!(out.starts_with("// k\n#line 1 \"common.cuh\"\n"), "{out}");
        assert!(out.contains(COMMON_HEADER));
        // The line after the include is line 3 of k.cu.
        assert!(out.ends_with("\n#line 3 \"k.cu\"\nint after;\n"), "{out}");
        assert!(!out.lines().any(|l| l.trim() == COMMON_INCLUDE), "an include line is left: {out}");
        assert_eq!(expand_common("k", "int x;\n"), "int x;\n");
        // Every kernel file that uses the shared helpers includes them.
        for (name, src) in KERNEL_SOURCES {
            let uses =
                src.contains("GRID_STRIDE(") || common_functions().iter().any(|f| src.contains(&format!("{f}(")));
            assert!(!uses || src.contains(COMMON_INCLUDE), "{name}.cu uses common.cuh without including it");
        }
    }

    /// The names of the functions `common.cuh` defines.
    fn common_functions() -> Vec<&'static str> {
        let head = "__device__ __forceinline__ ";
        let names: Vec<&str> = COMMON_HEADER
            .match_indices(head)
            .filter_map(|(i, _)| {
                let decl = &COMMON_HEADER[i + head.len()..];
                let name = decl[..decl.find('(')?].rsplit([' ', '*', '&']).next()?;
                (!name.is_empty()).then_some(name)
            })
            .collect();
        assert!(names.contains(&"pack_half2") && names.contains(&"mma_16816"), "{names:?}");
        names
    }

    #[test]
    fn the_shared_helpers_are_defined_once() {
        // A kernel file's own copy of a common.cuh helper would compile (as an
        // overload) or fail only once expanded; either way the helper must live once.
        for (name, src) in KERNEL_SOURCES {
            for f in common_functions() {
                let defines = src.lines().any(|l| {
                    l.starts_with("__device__") && l.split('(').next().is_some_and(|d| d.ends_with(&format!(" {f}")))
                });
                assert!(!defines, "{name}.cu defines `{f}`, which kernels/common.cuh holds");
            }
            // Nor may a kernel spell a helper's body out inline (as flash_attention.cu
            // once did with sequence_of_row's binary search under other names):
            // no two consecutive statements of a helper appear in a row in a kernel.
            let lines = statements(src);
            for (f, body) in common_bodies() {
                for w in body.windows(2.min(body.len()).max(1)) {
                    let copied = lines.windows(w.len()).any(|l| l == w);
                    assert!(!copied, "{name}.cu has {w:?} of `{f}` inline; call the one in kernels/common.cuh");
                }
            }
        }
    }

    /// The lines of CUDA source `src` that say something: comments dropped,
    /// trimmed, shorter than 16 characters (braces, `return r;`) left out.
    fn statements(src: &str) -> Vec<&str> {
        src.lines().map(|l| l.split("//").next().unwrap_or("").trim()).filter(|l| l.len() >= 16).collect()
    }

    /// Each function of `common.cuh` with the statements of its body.
    fn common_bodies() -> Vec<(&'static str, Vec<&'static str>)> {
        let bodies: Vec<_> = common_functions()
            .into_iter()
            .map(|f| {
                let start = COMMON_HEADER.find(&format!(" {f}(")).expect("the helper is in the header");
                let body = &COMMON_HEADER[start..];
                let body = &body[body.find('{').expect("a body")..body.find("\n}").expect("a closing brace")];
                (f, statements(&body[1..]))
            })
            .collect();
        let binary_search = &bodies.iter().find(|(f, _)| *f == "sequence_of_row").expect("sequence_of_row").1;
        assert!(binary_search.contains(&"while (hi - lo > 1) {"), "{binary_search:?}");
        bodies
    }
}
