//! CUDA kernel sources (`kernels/*.cu`), embedded at build time by `build.rs`
//! as `(file stem, source)` pairs. The CUDA backend compiles them with NVRTC
//! for the device's architecture on first use.
//! `lova-fast kernels --check` compiles them all without a GPU (see
//! `backend::cuda::compile`).

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

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
}
