//! How many CPU threads a run may start. Each rayon worker costs a stack and a
//! scheduler slot but adds no speed past the cores: `--threads 100000` started
//! threads without limit (1,776 after 12 s). Requests past a small multiple of
//! the cores are capped, with a note saying so.

/// Threads per core a request may have: a few more than the cores help only
/// when some threads wait (they do not here), more never do.
pub const MAX_THREADS_PER_CORE: usize = 4;

/// The thread count to use for `requested`, and a note when it was capped.
/// `cores` is the machine's (`std::thread::available_parallelism`).
pub fn cap_threads(requested: usize, cores: usize) -> (usize, Option<String>) {
    let max = cores.max(1) * MAX_THREADS_PER_CORE;
    if requested > max {
        let note = format!(
            "{requested} threads asked for; using {max} ({MAX_THREADS_PER_CORE} per core on {cores} cores): \
             more threads than that only add overhead"
        );
        return (max, Some(note));
    }
    (requested, None)
}

/// The machine's core count, 1 when it cannot be read.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_past_a_few_per_core_are_capped_with_a_note() {
        assert_eq!(cap_threads(8, 2), (8, None));
        assert_eq!(cap_threads(1, 2), (1, None));
        let (n, note) = cap_threads(100_000, 2);
        assert_eq!(n, 8);
        assert!(note.unwrap().contains("100000"));
        assert_eq!(cap_threads(usize::MAX, 0).0, MAX_THREADS_PER_CORE);
    }
}
