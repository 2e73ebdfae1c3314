//! Embeds the CUDA kernel sources of `kernels/*.cu` in the binary, so that the
//! CUDA backend can compile them with NVRTC at run time without any file next
//! to the executable. Generates `$OUT_DIR/kernel_sources.rs`:
//! `pub const KERNEL_SOURCES: &[(&str, &str)]` = (file stem, source), sorted by name.

use std::fs;
use std::path::Path;

fn main() {
    let dir = Path::new("kernels");
    println!("cargo:rerun-if-changed=kernels");
    let mut kernels: Vec<(String, String)> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .map(|p| {
                println!("cargo:rerun-if-changed={}", p.display());
                let stem = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                let abs = fs::canonicalize(&p).unwrap_or(p);
                (stem, abs.display().to_string())
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    kernels.sort();
    let mut out = String::from("pub const KERNEL_SOURCES: &[(&str, &str)] = &[\n");
    for (name, path) in &kernels {
        out.push_str(&format!("    ({name:?}, include_str!({path:?})),\n"));
    }
    out.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    fs::write(Path::new(&out_dir).join("kernel_sources.rs"), out).expect("write kernel_sources.rs");
}
