//! `out = x @ w^T + bias + residual` with bf16 weights and f32 everything else.
//!
//! Why bf16 weights, f32 activations: a DiT step at a few seconds of audio has
//! few rows (M = 2 x tokens, 92 at 2 s) against K, N of 1536 to 6144, so every
//! weight is used by few rows and the f32 path spends much of its time moving
//! 4-byte weights. Rounding the weights once at load (2^-9 relative) halves that
//! traffic; keeping x, the products and the sums in f32 adds no other error.
//! No CPU this was developed on has AVX-512-BF16 or AMX, so bf16 is widened to
//! f32 in registers (a shift or a mask: bf16 is the top half of an f32) and
//! multiplied with ordinary f32 FMAs.
//!
//! Layout (`PackedBf16`, made once per weight): the weight `[n, k]` is cut into
//! panels of `NR` = 32 output columns; a panel is `k` rows of 64 bytes (one
//! cache line, 64-byte aligned), row `kk` holding the 32 weights of column
//! `kk` of the input. Within a row, 32-bit lane `j` holds column `j` in its low
//! half and column `16 + j` in its high half, so that one 512-bit load gives
//! columns 0..16 by a left shift by 16 and columns 16..32 by masking off the
//! low half. Columns past `n` in the last panel are zero.
//!
//! Blocking: the work is split into tasks of rows x (a group of panels), run
//! on rayon; rows are split only when there are too few panel groups to keep
//! every thread busy, so that each weight is read from memory once per product. A task walks `k` in blocks of `KC`; within a block,
//! each tile of rows (`MR` = 12 with AVX-512) is kept in L1 while it meets
//! every panel slice of the group (kept in L2 across row tiles).
//!
//! Reduction order and batch invariance: every output element is
//! `fma(x[kk], w[kk], acc)` for kk = 0, 1, ..., k-1 from acc = 0 (the partial
//! sum is stored in `out` between k blocks, exactly), then `+ bias`, then
//! `+ residual`. That sequence depends on neither `m`, nor the row's position
//! in a tile, nor the thread split, nor the instruction set: the AVX-512, AVX2
//! and scalar kernels give the same bits, and a row's result does not depend
//! on the other rows packed with it (both tested).

use half::{bf16, f16};
use rayon::prelude::*;

use super::precision::Isa;
use crate::error::{Error, Result};

/// Output columns per panel (two zmm registers of f32).
pub const NR: usize = 32;
/// Reduction block: a 12-row x tile (12 KiB) and a panel slice (16 KiB) fit in L1 together.
const KC: usize = 256;
/// Rows per tile of the AVX-512 kernel: 24 accumulators + 2 weight registers + a broadcast, of 32 zmm.
const MR_AVX512: usize = 12;
/// Rows per tile of the AVX2 kernel (16 columns): 8 accumulators + 2 weight registers + a broadcast, of 16 ymm.
const MR_AVX2: usize = 4;
/// Most rows per task (a multiple of both tile heights): their x block
/// (480 KiB per k block) and the group's panel slices (128 KiB) stay in L2.
/// Fewer rows per task would make each task read the same weights again.
const MAX_MC: usize = 480;
/// Most panels one task takes (8 panel slices of a k block: 128 KiB, in L2).
const MAX_GROUP: usize = 8;

/// One k-row of a panel: 32 bf16 weights in the lane order described above.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct PanelRow([u16; NR]);

/// A `[n, k]` weight rounded to bf16 (round to nearest even) in panel layout.
pub struct PackedBf16 {
    n: usize,
    k: usize,
    rows: Vec<PanelRow>,
}

/// Position of column `c` (0..32) of a panel within its 64-byte row.
const fn slot(c: usize) -> usize {
    if c < 16 { 2 * c } else { 2 * (c - 16) + 1 }
}

fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBf16 [{}, {}]", self.n, self.k)
    }
}

impl PackedBf16 {
    /// Packs `w`, `[n, k]` row-major (PyTorch `Linear` layout), panels in parallel.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Result<PackedBf16> {
        assert_eq!(w.len(), n * k, "weight of {} values is not [{n}, {k}]", w.len());
        PackedBf16::pack_with(n, k, |i| bf16::from_f32(w[i]).to_bits())
    }

    /// Packs the fp16 bits of an `[n, k]` weight as an engine file stores them:
    /// the same bf16 values as `pack` of their f32 widening (fp16 to f32 is
    /// exact), without an f32 copy of the weight.
    pub fn pack_f16(bits: &[u16], n: usize, k: usize) -> Result<PackedBf16> {
        assert_eq!(bits.len(), n * k, "weight of {} values is not [{n}, {k}]", bits.len());
        PackedBf16::pack_with(n, k, |i| bf16::from_f32(f16::from_bits(bits[i]).to_f32()).to_bits())
    }

    /// Packs the weight whose element `i` (row-major `[n, k]`) rounds to the bf16 bits `bf16_at(i)`.
    fn pack_with(n: usize, k: usize, bf16_at: impl Fn(usize) -> u16 + Sync) -> Result<PackedBf16> {
        let panels = n.div_ceil(NR);
        // The size comes from a file's header: a failed allocation is an error, not an abort.
        let mut rows = Vec::new();
        rows.try_reserve_exact(panels * k).map_err(|_| {
            Error::Limit(format!(
                "cannot allocate {} MiB for a bf16 copy of a [{n}, {k}] weight",
                (panels * k * 64) >> 20
            ))
        })?;
        rows.resize(panels * k, PanelRow([0; NR]));
        if k > 0 {
            rows.par_chunks_mut(k).enumerate().for_each(|(p, panel)| {
                let cols = NR.min(n - p * NR);
                // Row by row: 32 sequential read streams (one per column of the
                // panel), each cache line of them used 16 times from L1, and one
                // sequential write stream.
                for (kk, row) in panel.iter_mut().enumerate() {
                    for c in 0..cols {
                        row.0[slot(c)] = bf16_at((p * NR + c) * k + kk);
                    }
                }
            });
        }
        Ok(PackedBf16 { n, k, rows })
    }

    /// Output features (rows of the packed `[n, k]` weight).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (columns of the packed `[n, k]` weight).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes of the packed copy (padding of the last panel included).
    pub fn bytes(&self) -> usize {
        self.rows.len() * std::mem::size_of::<PanelRow>()
    }

    /// The weight as the kernels see it, `[n, k]` in f32 (tests and reference products).
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0.0; self.n * self.k];
        for col in 0..self.n {
            let (p, c) = (col / NR, col % NR);
            for kk in 0..self.k {
                w[col * self.k + kk] = widen(self.rows[p * self.k + kk].0[slot(c)]);
            }
        }
        w
    }
}

/// Raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `x` is `[m, k]`, `w` the packed `[n, k]`, `out` is `[m, n]`; `bias` `[n]` and
/// `residual` `[m, n]` are added after the product, in that order.
///
/// Panics when `isa` is not supported by this CPU (`Isa::supported`): the
/// backend resolves it from `Isa::detect` once, so this is a programming error.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &PackedBf16,
    n: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(isa.supported(), "the {} kernel does not run on this CPU", isa.name());
    assert_eq!(x.len(), m * k);
    assert_eq!((w.n, w.k), (n, k), "packed weight is [{}, {}], the product needs [{n}, {k}]", w.n, w.k);
    assert_eq!(out.len(), m * n);
    assert!(bias.is_none_or(|b| b.len() == n));
    assert!(residual.is_none_or(|r| r.len() == m * n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        epilogue(out, n, 0..m, 0..n, bias, residual);
        return;
    }
    let panels = n.div_ceil(NR);
    let mr = tile_rows(isa);
    // About four tasks per thread (rayon balances them), panels grouped for L2 reuse.
    let target = rayon::current_num_threads().max(1) * 4;
    let group = (panels / target).clamp(1, MAX_GROUP);
    let groups = panels.div_ceil(group);
    let m_chunks = if groups >= target { 1 } else { target.div_ceil(groups) };
    let mc = m.div_ceil(m_chunks).next_multiple_of(mr).min(MAX_MC);
    let m_chunks = m.div_ceil(mc);
    let ptr = SendPtr(out.as_mut_ptr());
    (0..m_chunks * groups).into_par_iter().for_each(|t| {
        let (chunk, g) = (t / groups, t % groups);
        let rows = chunk * mc..((chunk + 1) * mc).min(m);
        let panel_range = g * group..((g + 1) * group).min(panels);
        let p = ptr;
        // SAFETY: tasks cover disjoint (rows x panels) blocks of `out`, whose
        // length was checked; x and w are only read.
        unsafe { block(isa, x, k, w, n, rows, panel_range, bias, residual, p.0, m) };
    });
}

/// Rows per tile of `isa`'s kernel.
fn tile_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Scalar => MR_AVX512,
        Isa::Avx2Fma => MR_AVX2,
    }
}

/// One task: rows `rows` of the output, columns of panels `panels`.
///
/// # Safety
/// `out` points at an `[m, n]` f32 array and no other thread touches this block of it.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    isa: Isa,
    x: &[f32],
    k: usize,
    w: &PackedBf16,
    n: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: *mut f32,
    m: usize,
) {
    debug_assert!(rows.end <= m);
    let mr = tile_rows(isa);
    // A partial last panel is computed in a full-width scratch tile, so the
    // kernels never store past column n.
    let mut scratch = [0.0f32; MR_AVX512 * NR];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let (first, last) = (k0 == 0, k0 + kc == k);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let tile_rows = mr.min(rows.end - r0);
            // SAFETY: rows r0..r0 + tile_rows of x exist (r0 + tile_rows <= m), from column k0.
            let xp = unsafe { x.as_ptr().add(r0 * k + k0) };
            for p in panels.clone() {
                let c0 = p * NR;
                let cols = NR.min(n - c0);
                let wp = w.rows[p * k + k0..p * k + k0 + kc].as_ptr();
                // SAFETY: the tile lies inside out's block of this task.
                let tile = unsafe { out.add(r0 * n + c0) };
                if cols == NR {
                    // SAFETY: full tile inside `out`, stride n; kernel supported (checked by the caller).
                    unsafe { run_tile(isa, tile_rows, xp, k, wp, kc, tile, n, first) };
                } else {
                    scratch.fill(0.0);
                    for r in 0..tile_rows {
                        if !first {
                            // SAFETY: the valid columns of row r of the tile.
                            let src = unsafe { std::slice::from_raw_parts(tile.add(r * n), cols) };
                            scratch[r * NR..r * NR + cols].copy_from_slice(src);
                        }
                    }
                    // SAFETY: scratch holds MR_AVX512 >= tile_rows rows of NR.
                    unsafe { run_tile(isa, tile_rows, xp, k, wp, kc, scratch.as_mut_ptr(), NR, first) };
                    for r in 0..tile_rows {
                        // SAFETY: as above.
                        let dst = unsafe { std::slice::from_raw_parts_mut(tile.add(r * n), cols) };
                        dst.copy_from_slice(&scratch[r * NR..r * NR + cols]);
                    }
                }
                if last {
                    // SAFETY: this task's rows of `out`, which only it touches; the
                    // epilogue reads and writes columns c0..c0 + cols of them.
                    let rows_out = unsafe { std::slice::from_raw_parts_mut(out.add(r0 * n), tile_rows * n) };
                    let res = residual.map(|r| &r[r0 * n..(r0 + tile_rows) * n]);
                    epilogue(rows_out, n, 0..tile_rows, c0..c0 + cols, bias, res);
                }
            }
            r0 += tile_rows;
        }
    }
}

/// `out[r][c] += bias[c]`, then `+= residual[r][c]`, as the f32 path does after its GEMM.
fn epilogue(
    out: &mut [f32],
    n: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) {
    for r in rows {
        let row = &mut out[r * n + cols.start..r * n + cols.end];
        if let Some(b) = bias {
            row.iter_mut().zip(&b[cols.clone()]).for_each(|(o, b)| *o += b);
        }
        if let Some(res) = residual {
            row.iter_mut().zip(&res[r * n + cols.start..r * n + cols.end]).for_each(|(o, r)| *o += r);
        }
    }
}

/// One tile: `rows` rows x 32 columns, k block of `kc`, accumulated into `c`
/// (stride `ldc`), from zero when `first`.
///
/// # Safety
/// `x` has `rows` rows of at least `kc` values at stride `ldx`; `w` has `kc`
/// panel rows; `c` has `rows` rows of 32 writable values at stride `ldc`;
/// `isa` runs on this CPU; rows <= the kernel's tile height.
#[allow(clippy::too_many_arguments)]
unsafe fn run_tile(
    isa: Isa,
    rows: usize,
    x: *const f32,
    ldx: usize,
    w: *const PanelRow,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract, and AVX-512F is present (isa supported).
        Isa::Avx512 => unsafe {
            macro_rules! rows {
                ($($r:literal)*) => {
                    match rows {
                        $($r => avx512::tile::<$r>(x, ldx, w, kc, c, ldc, first),)*
                        _ => unreachable!("tile of {rows} rows"),
                    }
                };
            }
            rows!(1 2 3 4 5 6 7 8 9 10 11 12)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX2 and FMA are present; the two halves cover the 32 columns.
        Isa::Avx2Fma => unsafe {
            for half in 0..2 {
                match rows {
                    1 => avx2::tile::<1>(x, ldx, w, kc, c, ldc, first, half),
                    2 => avx2::tile::<2>(x, ldx, w, kc, c, ldc, first, half),
                    3 => avx2::tile::<3>(x, ldx, w, kc, c, ldc, first, half),
                    4 => avx2::tile::<4>(x, ldx, w, kc, c, ldc, first, half),
                    _ => unreachable!("tile of {rows} rows"),
                }
            }
        },
        // SAFETY: the caller's contract.
        _ => unsafe { tile_scalar(rows, x, ldx, w, kc, c, ldc, first) },
    }
}

/// The portable kernel, and the definition of the result every SIMD kernel
/// must reproduce bit for bit.
///
/// # Safety
/// As `run_tile`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_scalar(
    rows: usize,
    x: *const f32,
    ldx: usize,
    w: *const PanelRow,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    // SAFETY: the caller's contract gives these extents.
    let (w, x) = unsafe { (std::slice::from_raw_parts(w, kc), std::slice::from_raw_parts(x, (rows - 1) * ldx + kc)) };
    for r in 0..rows {
        for col in 0..NR {
            // SAFETY: row r, column col of the tile.
            let cp = unsafe { c.add(r * ldc + col) };
            let mut acc = if first { 0.0 } else { unsafe { *cp } };
            for (kk, wr) in w.iter().enumerate() {
                acc = x[r * ldx + kk].mul_add(widen(wr.0[slot(col)]), acc);
            }
            // SAFETY: as above.
            unsafe { *cp = acc };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{NR, PanelRow};
    use std::arch::x86_64::*;

    /// `R` rows x 32 columns in 2R zmm accumulators.
    ///
    /// # Safety
    /// As `super::run_tile`, with AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const R: usize>(
        x: *const f32,
        ldx: usize,
        w: *const PanelRow,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        first: bool,
    ) {
        const { assert!(NR == 32) };
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: row r of the tile, 32 values.
                unsafe {
                    a[0] = _mm512_loadu_ps(c.add(r * ldc));
                    a[1] = _mm512_loadu_ps(c.add(r * ldc + 16));
                }
            }
        }
        let high = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
        for kk in 0..kc {
            // SAFETY: panel row kk exists (kc rows) and is 64-byte aligned.
            let wv = unsafe { _mm512_load_si512(w.add(kk).cast()) };
            // Lane j: column j in the low half (shifted up: an f32 with the bf16's bits),
            // column 16 + j in the high half (low half cleared).
            let lo = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wv));
            let hi = _mm512_castsi512_ps(_mm512_and_si512(wv, high));
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: x[r][kk] is inside the x tile.
                let xb = _mm512_set1_ps(unsafe { *x.add(r * ldx + kk) });
                a[0] = _mm512_fmadd_ps(xb, lo, a[0]);
                a[1] = _mm512_fmadd_ps(xb, hi, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: row r of the tile, 32 values.
            unsafe {
                _mm512_storeu_ps(c.add(r * ldc), a[0]);
                _mm512_storeu_ps(c.add(r * ldc + 16), a[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::PanelRow;
    use std::arch::x86_64::*;

    /// `R` rows x 16 columns of the panel: columns `8 half .. 8 half + 8` and
    /// `16 + 8 half .. 16 + 8 half + 8`, which lanes `8 half .. 8 half + 8`
    /// (the `half`-th 32 bytes of a panel row) hold.
    ///
    /// # Safety
    /// As `super::run_tile`, with AVX2 and FMA present; half is 0 or 1.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        x: *const f32,
        ldx: usize,
        w: *const PanelRow,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        first: bool,
        half: usize,
    ) {
        let (lo_col, hi_col) = (8 * half, 16 + 8 * half);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: row r of the tile, columns inside its 32.
                unsafe {
                    a[0] = _mm256_loadu_ps(c.add(r * ldc + lo_col));
                    a[1] = _mm256_loadu_ps(c.add(r * ldc + hi_col));
                }
            }
        }
        let high = _mm256_set1_epi32(0xFFFF_0000_u32 as i32);
        for kk in 0..kc {
            // SAFETY: panel row kk exists; its `half`-th 32 bytes.
            let wv = unsafe { _mm256_loadu_si256(w.add(kk).cast::<__m256i>().add(half)) };
            let lo = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wv));
            let hi = _mm256_castsi256_ps(_mm256_and_si256(wv, high));
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: x[r][kk] is inside the x tile.
                let xb = _mm256_set1_ps(unsafe { *x.add(r * ldx + kk) });
                a[0] = _mm256_fmadd_ps(xb, lo, a[0]);
                a[1] = _mm256_fmadd_ps(xb, hi, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe {
                _mm256_storeu_ps(c.add(r * ldc + lo_col), a[0]);
                _mm256_storeu_ps(c.add(r * ldc + hi_col), a[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn packing_rounds_to_nearest_bf16_and_round_trips() {
        for &(n, k) in &[(1, 1), (31, 3), (32, 5), (33, 2), (70, 17)] {
            let w = values(n * k, 7);
            let p = PackedBf16::pack(&w, n, k).unwrap();
            assert_eq!(p.bytes(), n.div_ceil(NR) * k * 64);
            let back = p.unpack();
            for (a, b) in w.iter().zip(&back) {
                assert_eq!(*b, bf16::from_f32(*a).to_f32(), "{n}x{k}");
            }
        }
    }

    #[test]
    fn packing_fp16_bits_equals_packing_their_f32_values() {
        let (n, k) = (45, 19);
        // Values across fp16's range, its subnormals and both zeros included.
        let bits: Vec<u16> = (0..n * k)
            .map(|i| (i as u16).wrapping_mul(40503))
            .filter(|b| !f16::from_bits(*b).is_nan())
            .chain(std::iter::repeat(0x8000))
            .take(n * k)
            .collect();
        let widened: Vec<f32> = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
        let from_bits = PackedBf16::pack_f16(&bits, n, k).unwrap();
        let from_f32 = PackedBf16::pack(&widened, n, k).unwrap();
        assert!(from_bits.rows.iter().zip(&from_f32.rows).all(|(a, b)| a.0 == b.0));
        assert_eq!(from_bits.rows.len(), from_f32.rows.len());
    }

    /// Every kernel this CPU has against a plain f64 product of the same
    /// bf16-rounded weights, and against each other bit for bit.
    #[test]
    fn kernels_agree_with_each_other_and_with_f64() {
        for &(m, k, n) in &[(1, 1, 1), (13, 300, 33), (25, 513, 64), (2, 0, 5), (100, 40, 96), (5, 7, 200)] {
            let x = values(m * k, 1);
            let w = PackedBf16::pack(&values(n * k, 2), n, k).unwrap();
            let wf = w.unpack();
            let b = values(n, 3);
            let r = values(m * n, 4);
            let mut first: Option<Vec<f32>> = None;
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; m * n];
                linear_bf16(isa, &x, m, k, &w, n, Some(&b), Some(&r), &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|p| x[i * k + p] as f64 * wf[j * k + p] as f64).sum();
                        let want = dot + b[j] as f64 + r[i * n + j] as f64;
                        // f32 accumulation of k products of magnitude <= 1: k * 2^-24 each
                        // step, bounded by k^2 2^-24 in total; plus two adds.
                        let tol = (k * k + 4) as f64 * 2f64.powi(-24) * 4.0;
                        let got = out[i * n + j] as f64;
                        assert!((got - want).abs() <= tol, "{isa:?} {m}x{k}x{n} [{i},{j}]: {got} vs {want}");
                    }
                }
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa:?} differs from the fastest kernel on {m}x{k}x{n}"
                    ),
                }
            }
        }
    }
}
