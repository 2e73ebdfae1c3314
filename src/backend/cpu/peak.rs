//! Microbenchmarks of this CPU (`lova-fast bench --peak`): the f32 FMA peak of
//! each kernel's instruction set, and the GFLOP/s of the Linear op (f32
//! reference and bf16) at the DiT's shapes, so that a step's achieved rate can
//! be read against what the machine can do.

use std::time::Instant;

use rayon::prelude::*;

use super::gemm_bf16::{PackedBf16, linear_bf16};
use super::linear::linear;
use super::precision::Isa;

/// f32 FMAs per loop iteration: independent accumulators (enough to cover a
/// 4-cycle FMA latency on two ports, within the register file) x lanes.
fn fmas_per_iteration(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => CHAINS * 16,
        Isa::Avx2Fma => CHAINS / 2 * 8,
        Isa::Scalar => CHAINS,
    }
}

/// Accumulators of the AVX-512 loop (of 32 zmm); the AVX2 loop has half (of 16 ymm).
const CHAINS: usize = 24;

/// A measured rate: per wall-clock second, and per second of CPU time this
/// process used meanwhile (GFLOP/s per busy core: what a core does while it
/// runs, which on a machine shared with other work the wall clock hides).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// GFLOP/s per wall-clock second.
    pub gflops: f64,
    /// None where the process's CPU time cannot be read (not Linux).
    pub gflops_per_cpu_second: Option<f64>,
}

/// CPU time (user + system) of this process so far, from /proc (Linux; ticks of 1/100 s).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

fn rate(flops: f64, started: Instant, cpu_started: Option<f64>) -> Rate {
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu_started, process_cpu_seconds()) {
        (Some(a), Some(b)) if b > a => Some(b - a),
        _ => None,
    };
    Rate { gflops: flops / wall * 1e-9, gflops_per_cpu_second: cpu.map(|c| flops / c * 1e-9) }
}

/// GFLOP/s of `CHAINS` independent FMA chains in registers on each of `threads`
/// threads (rayon's pool), for about `seconds`: the ceiling no GEMM on `isa` can pass.
pub fn fma_peak(isa: Isa, threads: usize, seconds: f64) -> Rate {
    assert!(isa.supported(), "the {} kernel does not run on this CPU", isa.name());
    let iterations = 1u64 << 20;
    let flops_per_call = 2.0 * fmas_per_iteration(isa) as f64 * iterations as f64;
    let cpu_started = process_cpu_seconds();
    let started = Instant::now();
    let calls: u64 = (0..threads.max(1))
        .into_par_iter()
        .map(|_| {
            let mut calls = 0u64;
            let mut sink = 0.0f32;
            while started.elapsed().as_secs_f64() < seconds {
                sink += fma_loop(isa, iterations);
                calls += 1;
            }
            std::hint::black_box(sink);
            calls
        })
        .sum();
    rate(calls as f64 * flops_per_call, started, cpu_started)
}

fn fma_loop(isa: Isa, iterations: u64) -> f32 {
    match isa {
        // SAFETY: the feature is present (checked in `fma_peak_gflops`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { simd::fma_avx512(iterations) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { simd::fma_avx2(iterations) },
        _ => {
            let mut acc = [0.0f32; CHAINS];
            for _ in 0..iterations {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = (i as f32).mul_add(1.0000001, *a);
                }
                std::hint::black_box(&mut acc);
            }
            acc.iter().sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The loops are written in assembly: the compiler, given an array of
    //! accumulators, rotates or spills them, which measures its register
    //! allocation rather than the FMA units.
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// 24 independent zmm FMA chains, `iterations` times.
    ///
    /// # Safety
    /// AVX-512F must be present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iterations: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        // SAFETY: registers only; every register written is declared clobbered.
        unsafe {
            asm!(
            "2:",
            "vfmadd231ps zmm0, zmm30, zmm31",
            "vfmadd231ps zmm1, zmm30, zmm31",
            "vfmadd231ps zmm2, zmm30, zmm31",
            "vfmadd231ps zmm3, zmm30, zmm31",
            "vfmadd231ps zmm4, zmm30, zmm31",
            "vfmadd231ps zmm5, zmm30, zmm31",
            "vfmadd231ps zmm6, zmm30, zmm31",
            "vfmadd231ps zmm7, zmm30, zmm31",
            "vfmadd231ps zmm8, zmm30, zmm31",
            "vfmadd231ps zmm9, zmm30, zmm31",
            "vfmadd231ps zmm10, zmm30, zmm31",
            "vfmadd231ps zmm11, zmm30, zmm31",
            "vfmadd231ps zmm12, zmm30, zmm31",
            "vfmadd231ps zmm13, zmm30, zmm31",
            "vfmadd231ps zmm14, zmm30, zmm31",
            "vfmadd231ps zmm15, zmm30, zmm31",
            "vfmadd231ps zmm16, zmm30, zmm31",
            "vfmadd231ps zmm17, zmm30, zmm31",
            "vfmadd231ps zmm18, zmm30, zmm31",
            "vfmadd231ps zmm19, zmm30, zmm31",
            "vfmadd231ps zmm20, zmm30, zmm31",
            "vfmadd231ps zmm21, zmm30, zmm31",
            "vfmadd231ps zmm22, zmm30, zmm31",
            "vfmadd231ps zmm23, zmm30, zmm31",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iterations.max(1) => _,
            in("zmm30") a, in("zmm31") b,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            options(nomem, nostack),
            );
        }
        0.0
    }

    /// 12 independent ymm FMA chains, `iterations` times.
    ///
    /// # Safety
    /// AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iterations: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        // SAFETY: as above.
        unsafe {
            asm!(
            "2:",
            "vfmadd231ps ymm0, ymm14, ymm15",
            "vfmadd231ps ymm1, ymm14, ymm15",
            "vfmadd231ps ymm2, ymm14, ymm15",
            "vfmadd231ps ymm3, ymm14, ymm15",
            "vfmadd231ps ymm4, ymm14, ymm15",
            "vfmadd231ps ymm5, ymm14, ymm15",
            "vfmadd231ps ymm6, ymm14, ymm15",
            "vfmadd231ps ymm7, ymm14, ymm15",
            "vfmadd231ps ymm8, ymm14, ymm15",
            "vfmadd231ps ymm9, ymm14, ymm15",
            "vfmadd231ps ymm10, ymm14, ymm15",
            "vfmadd231ps ymm11, ymm14, ymm15",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iterations.max(1) => _,
            in("ymm14") a, in("ymm15") b,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            options(nomem, nostack),
            );
        }
        0.0
    }
}

/// GFLOP/s of one `[m, k] x [n, k]^T` Linear (with bias) on the rayon pool:
/// the f32 reference path when `isa` is None, else bf16 with that kernel.
/// Repeats for about `seconds`; the weight is packed once, outside the clock.
pub fn linear_rate(isa: Option<Isa>, m: usize, k: usize, n: usize, seconds: f64) -> Rate {
    let values = |len: usize, scale: f32| (0..len).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * scale).collect();
    let x: Vec<f32> = values(m * k, 1.0);
    let w: Vec<f32> = values(n * k, 0.05);
    let b: Vec<f32> = values(n, 0.1);
    let mut out = vec![0.0f32; m * n];
    let packed = isa.map(|_| PackedBf16::pack(&w, n, k).expect("memory for the benchmark's weight"));
    let run = |out: &mut [f32]| match (isa, &packed) {
        (Some(isa), Some(p)) => linear_bf16(isa, &x, m, k, p, n, Some(&b), None, out),
        _ => linear(&x, m, k, &w, n, Some(&b), None, out),
    };
    run(&mut out);
    let cpu_started = process_cpu_seconds();
    let started = Instant::now();
    let mut calls = 0u32;
    while calls == 0 || started.elapsed().as_secs_f64() < seconds {
        run(&mut out);
        calls += 1;
    }
    std::hint::black_box(&out);
    rate(2.0 * (m * k * n) as f64 * calls as f64, started, cpu_started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microbenchmarks_report_positive_rates_on_every_kernel() {
        for isa in Isa::available() {
            assert!(fma_peak(isa, 1, 0.01).gflops > 0.0, "{isa:?}");
            assert!(linear_rate(Some(isa), 3, 40, 50, 0.0).gflops > 0.0, "{isa:?}");
        }
        assert!(linear_rate(None, 3, 40, 50, 0.0).gflops > 0.0);
        if cfg!(target_os = "linux") {
            assert!(process_cpu_seconds().is_some());
        }
    }
}
