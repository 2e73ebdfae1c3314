// common.cuh: helpers shared by the kernel files, included with
// `#include "common.cuh"`. NVRTC sees no files: the backend substitutes this
// text for that line before compiling (src/kernels.rs, `expand_common`), with
// #line directives so that messages name the right file and line.

// A 1-D grid-stride loop over n elements with 64-bit indices: correct for any
// grid size, so launchers may cap the grid.
#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// A 2-D grid-stride loop over the rows and columns of a [rows, cols] tensor:
// rows over y (blockIdx.y * blockDim.y + threadIdx.y), columns over x, so a
// row's per-row work (its sequence, its source row) is done once per row and
// thread, and no element index is divided. Correct for any grid size; the
// launchers (`CudaBackend::launch_rows`) cap grid.y at 65535. Nest COL_STRIDE
// inside ROW_STRIDE.
#define ROW_STRIDE(r, rows) \
    for (long long r = (long long)blockIdx.y * blockDim.y + threadIdx.y; r < (rows); r += (long long)gridDim.y * blockDim.y)
#define COL_STRIDE(c, cols) \
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < (cols); c += (long long)gridDim.x * blockDim.x)

// The sequence b with offsets[b] <= row < offsets[b + 1] of a packed batch of
// count sequences (offsets: int32 [count + 1] cumulative rows), by binary search.
// Empty sequences are skipped: the largest such b is returned. For per-row
// work only (once per row or tile): element loops read the row -> sequence map
// that `CudaBackend::prepare` uploads (`row_sequences`) instead.
__device__ __forceinline__ int sequence_of_row(const int* __restrict__ offsets, int count, long long row) {
    int lo = 0, hi = count;  // invariant: offsets[lo] <= row, answer in [lo, hi)
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (offsets[mid] <= row) lo = mid; else hi = mid;
    }
    return lo;
}

// The sum of v over the 32 lanes of a warp, in every lane (butterfly over
// __shfl_xor_sync; all 32 lanes must take part).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// fp16 values are kept as their bit patterns (unsigned short): no CUDA header
// is included (NVRTC needs none), and the conversions are the PTX cvt
// instructions, exactly what cuda_fp16.h's __float2half_rn / __half2float emit.

// f32 -> fp16, round to nearest even; beyond the fp16 range, +-inf (as under
// PyTorch autocast, whose fp16 matmuls the reference runs).
__device__ __forceinline__ unsigned short f32_to_f16_rn(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// fp16 -> f32 (exact).
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Two floats as one fp16x2 register, `lo` in the low half (the lower column,
// the lower address in memory), each rounded as f32_to_f16_rn rounds.
__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    unsigned r;
    // cvt.rn.f16x2.f32 d, a, b puts a in the upper half and b in the lower.
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// d += a * b on tensor cores (mma.sync m16n8k16, sm_80+): a is a 16x16 fp16 A
// fragment (row-major), b0, b1 a 16x8 fp16 B fragment (column-major), d 16x8
// f32 accumulators, in the PTX ISA's fragment layouts: lane (g = lane / 4,
// t = lane % 4) holds a[0] = row g, columns 2t, 2t + 1; a[1] = row g + 8;
// a[2], a[3] = the same 8 columns later; b0 = rows 2t, 2t + 1 of column g,
// b1 = 8 rows later; d[0], d[1] = row g, columns 2t, 2t + 1; d[2], d[3] = row g + 8.
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The 32-bit shared-window address of a generic pointer into shared memory
// (cvta.to.shared), what ldmatrix and cp.async take.
__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Four 8x8 fp16 matrices from shared memory (16 bytes per row): lane l gives the
// row address of row l % 8 of matrix l / 8; lane t receives, of matrix i, row
// t / 4, columns 2 (t % 4) and 2 (t % 4) + 1 in r[i], the mma_16816 A/B
// fragment layout.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
