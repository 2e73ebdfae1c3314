// conv1d.cu: the VAE decoder's convolutions as implicit GEMMs on tensor cores,
// and SnakeBeta on its own (CPU twins in src/backend/cpu/conv.rs).
//
// - conv1d_implicit_gemm, conv (out_offsets == NULL): a stride-1, zero-padded,
//   dilated conv over each sequence of a packed batch:
//     out[r, co] = bias[co] + residual[r, co]
//                + sum_{tap, ci} act(x[r + tap * dilation - pad, ci]) * w[co, tap * cin + ci]
//   where a source row outside r's own sequence reads 0, and act is SnakeBeta
//   (`y = x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2`, per input
//   channel) when snake_alpha != NULL, else the identity. As a GEMM:
//   M = rows (time), N = C_out, K = taps * C_in; A[r, k] is gathered from x
//   (never stored), B = w, which is the engine's tap-major layout [C_out, K].
// - conv1d_implicit_gemm, transposed conv (out_offsets != NULL; kernel 2s,
//   stride s, padding p = s / 2, s = `stride`): output row j of a sequence has
//   phase r = (j + p) mod s and reads input rows i0 = (j + p) / s and i0 - 1:
//     out[j] = bias + [x[i0] | x[i0 - 1]] @ w[r]^T,   w [s, C_out, 2 * C_in].
//   blockIdx.z is the phase: each phase is a GEMM with K = 2 * C_in whose row m
//   is an input row i (every phase has exactly one output row per input row):
//   j = i * s + (r - p) mod s, and i0 = i + (r < p). That is the conv gather with
//   taps = 2, dilation -1 and pad -(r < p), and rows scattered to j.
// - snake_beta_f32: out = SnakeBeta(x) per column (the op kept for graphs that
//   store the activation; the VAE itself fuses it, see src/models/vae.rs).
//
// Why the activation is fused into the input load (and not the epilogue of the
// previous conv): in the decoder every SnakeBeta feeds exactly one conv, and a
// residual unit x + conv1(snake(conv7(snake(x)))) needs x itself for its
// residual. An epilogue fusion would have to write both x and snake(x); the
// load fusion writes only x and computes snake(x) in f32 where the GEMM operand
// is formed, rounding the activated value (not x) to fp16, as the reference's
// autocast does. Within a K tile the activation is computed once per loaded A
// element: the thread that loads x[src, ci] from global memory activates it
// (one __sinf), rounds the pair it holds with one packed cvt.rn.f16x2.f32 and
// stores it; the MMAs of both column warps then read the stored fp16 value.
// What remains is recomputation across tiles: the same x value is loaded and
// activated again for each tap whose window covers it (a different K tile of
// the same CTA) and for each column tile (another CTA), 7 * C_out / 64 times
// for a 7-tap conv. Removing the tap factor needs a different K order (a
// C_in chunk of x rows [row0 - pad, row0 + 127 + 6 * dilation - pad] activated
// once into shared memory and read shifted by each tap, with the sequence
// mask applied per tap and fragment row); not done. sin is __sinf (the
// special-function unit; a full sinf would cost more than the MMAs): its
// absolute error (~1e-6 for |alpha x| <= pi, growing ~|alpha x| * 2^-22
// beyond) enters y = x + sin^2 / b additively, far below the fp16 rounding of
// y (2^-11 |y|) that follows.
//
// Numerics: fp16 operands (A rounded after the activation, B stored fp16),
// f32 accumulation (mma.sync m16n8k16 f32.f16.f16.f32), f32 bias, residual and
// output.
//
// Tiles: a CTA computes BM x BN = 128 x 64 outputs with 4 warps (2 x 2, warp
// tile 64 x 32 = 4 x 4 MMA tiles of 16 x 8: 64 f32 accumulators per thread),
// stepping K by BK = 32 (two k16 MMA steps). BN = 64 because C_out is >= 128
// everywhere but the final 128 -> 2 conv (where a wider tile would only add
// waste); BM = 128 because M (time) is long everywhere (up to 6.2 M rows) and a
// tall warp tile reuses each B fragment over 4 A fragments. Shared memory per
// CTA: A 128 x 40 fp16 + B 64 x 40 fp16 (rows padded from 32 to 40 halves,
// 80 bytes, so that the 8 16-byte rows one ldmatrix phase reads fall on
// distinct banks: row g at word 20 g mod 32 = 0, 20, 8, 28, 16, 4, 24, 12, four
// words each) + 3 x 128 int row tables = 16.9 KB, static, so several CTAs fit
// on an SM. Fragments are read with ldmatrix.x4 (16 bytes per lane and
// instruction): per k16 step a warp issues 4 for its A fragments and 2 for its
// B fragments (4 column tiles), where 4-byte loads took 16 and 8. The tile is
// stored 4 bytes per thread and row for A (the packed pair of columns a
// thread activates) and 16 bytes for B. The next K tile is loaded from global
// memory into registers while the MMAs run on the current one (register
// double buffering).
//
// Layout: x [rows_in, C_in] f32, out and residual [rows_out, C_out] f32, all
// row-major in the arena; w fp16 bit patterns. Sequences: int32 cumulative row
// offsets (count + 1 entries) of the input (in_offsets) and, for the transposed
// conv, of the output (out_offsets). Element offsets are 64-bit (6.2 M rows x
// 128 channels and more); row indices are 32-bit (the host checks < 2^31).
// The B tile is loaded 16 bytes at a time when K % 8 == 0 (every decoder conv;
// allocations are 256-byte aligned), element by element otherwise.
// Launch: grid (ceil(M / 128), ceil(C_out / 64), phases = 1 or s), 128 threads.

#include "common.cuh"

#define CONV_BM 128
#define CONV_BN 64
#define CONV_BK 32
#define CONV_LD 40  // halves per shared-memory row: BK + 8
#define CONV_THREADS 128
// Rows of the A tile one thread loads: BM / (THREADS / (BK / 2)).
#define CONV_A_ROWS 16

// What one thread holds of a K tile between its global load and its shared store.
struct ConvStage {
    float2 a[CONV_A_ROWS];  // raw x values of its column pair, rows a_row + 8 i
    float alpha[2], inv_beta[2];  // SnakeBeta parameters of its two columns (0 when k >= K)
    uint4 b[2];  // 16 fp16 weights of its B row
};

// Loads K tile k0 into registers. Thread t loads A columns k0 + 2 (t % 16) + {0, 1}
// of rows t / 16 + 8 i, and B row t / 2, columns k0 + 16 (t % 2) .. + 16.
__device__ __forceinline__ void conv_load_tile(ConvStage& s, int k0, const float* __restrict__ x,
                                               const float* __restrict__ snake_alpha,
                                               const float* __restrict__ snake_beta,
                                               const unsigned short* __restrict__ w, int n, int cin, int K,
                                               int dilation, int pad, long long row0, int col0, const int* row_lo,
                                               const int* row_hi) {
    const int tid = threadIdx.x;
    const int a_col = 2 * (tid & 15), a_row = tid >> 4;
    int src_shift[2], ci[2];
    bool k_ok[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        int k = k0 + a_col + h;
        k_ok[h] = k < K;
        int tap = k_ok[h] ? k / cin : 0;
        ci[h] = k_ok[h] ? k - tap * cin : 0;
        src_shift[h] = tap * dilation - pad;
        if (snake_alpha != nullptr && k_ok[h]) {
            s.alpha[h] = expf(snake_alpha[ci[h]]);
            s.inv_beta[h] = 1.0f / (expf(snake_beta[ci[h]]) + 1e-9f);
        } else {
            s.alpha[h] = 0.0f;
            s.inv_beta[h] = 0.0f;
        }
    }
#pragma unroll
    for (int i = 0; i < CONV_A_ROWS; ++i) {
        int lr = a_row + 8 * i;
        long long r = row0 + lr;
        int lo = row_lo[lr], hi = row_hi[lr];
        float v[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            long long src = r + src_shift[h];
            v[h] = (k_ok[h] && src >= lo && src < hi) ? __ldg(x + src * cin + ci[h]) : 0.0f;
        }
        s.a[i] = make_float2(v[0], v[1]);
    }
    const int b_row = tid >> 1, b_col = k0 + 16 * (tid & 1);
    const int co = col0 + b_row;
    const unsigned short* wrow = w + (long long)co * K;
    if ((K & 7) == 0) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            int k = b_col + 8 * q;
            s.b[q] = (co < n && k < K) ? __ldg(reinterpret_cast<const uint4*>(wrow + k)) : make_uint4(0, 0, 0, 0);
        }
    } else {
        unsigned int packed[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            int k = b_col + 2 * j;
            unsigned int lo = (co < n && k < K) ? wrow[k] : 0u;
            unsigned int hi = (co < n && k + 1 < K) ? wrow[k + 1] : 0u;
            packed[j] = lo | (hi << 16);
        }
        s.b[0] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
        s.b[1] = make_uint4(packed[4], packed[5], packed[6], packed[7]);
    }
}

// Activates (SnakeBeta, f32), rounds to fp16 and stores the staged tile.
__device__ __forceinline__ void conv_store_tile(const ConvStage& s, bool snake, unsigned short* As,
                                                unsigned short* Bs) {
    const int tid = threadIdx.x;
    const int a_col = 2 * (tid & 15), a_row = tid >> 4;
#pragma unroll
    for (int i = 0; i < CONV_A_ROWS; ++i) {
        float v0 = s.a[i].x, v1 = s.a[i].y;
        if (snake) {
            // snake(0) = 0: padding and k >= K (parameters 0) stay 0.
            float s0 = __sinf(s.alpha[0] * v0), s1 = __sinf(s.alpha[1] * v1);
            v0 = v0 + s.inv_beta[0] * s0 * s0;
            v1 = v1 + s.inv_beta[1] * s1 * s1;
        }
        *reinterpret_cast<unsigned int*>(As + (a_row + 8 * i) * CONV_LD + a_col) = pack_half2(v0, v1);
    }
    uint4* bdst = reinterpret_cast<uint4*>(Bs + (tid >> 1) * CONV_LD + 16 * (tid & 1));
    bdst[0] = s.b[0];
    bdst[1] = s.b[1];
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv1d_implicit_gemm(const float* __restrict__ x, const float* __restrict__ snake_alpha,
                         const float* __restrict__ snake_beta, const unsigned short* __restrict__ w,
                         const float* __restrict__ bias, const float* __restrict__ residual,
                         float* __restrict__ out, int m_rows, int n, int cin, int taps, int dilation, int pad,
                         const int* __restrict__ in_offsets, int count, const int* __restrict__ out_offsets,
                         int stride) {
    __shared__ __align__(16) unsigned short As[CONV_BM * CONV_LD];
    __shared__ __align__(16) unsigned short Bs[CONV_BN * CONV_LD];
    __shared__ int row_lo[CONV_BM], row_hi[CONV_BM], row_out[CONV_BM];

    const int K = taps * cin;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const long long row0 = (long long)blockIdx.x * CONV_BM;
    const int col0 = blockIdx.y * CONV_BN;

    // The transposed conv: phase r = blockIdx.z, its weights, gather and row scatter.
    int phase_shift = 0;
    if (out_offsets != nullptr) {
        const int phase = blockIdx.z, p = stride / 2;
        dilation = -1;
        pad = phase < p ? -1 : 0;
        phase_shift = (phase + stride - p) % stride;
        w += (long long)phase * n * K;
    }

    // Per row of the tile: its sequence's input rows [lo, hi) and its output row (-1: none).
    for (int i = tid; i < CONV_BM; i += CONV_THREADS) {
        long long r = row0 + i;
        if (r < m_rows) {
            int b = sequence_of_row(in_offsets, count, r);
            int start = in_offsets[b];
            row_lo[i] = start;
            row_hi[i] = in_offsets[b + 1];
            row_out[i] = out_offsets != nullptr ? out_offsets[b] + ((int)r - start) * stride + phase_shift : (int)r;
        } else {
            row_lo[i] = 0;
            row_hi[i] = 0;
            row_out[i] = -1;
        }
    }
    __syncthreads();

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const bool snake = snake_alpha != nullptr;
    const int warp_m = (warp >> 1) * 64, warp_n = (warp & 1) * 32;
    const int g = lane >> 2, t = lane & 3;
    // ldmatrix row addresses (lane l gives row l % 8 of matrix l / 8). A, matrices
    // {rows 0-7, rows 8-15} x {columns 0-7, 8-15} of a 16 x 16 fragment = a[0..3];
    // B, {columns 0-7, 8-15} of column tile 2p, then of 2p + 1 = b0, b1 of each.
    const unsigned a_addr = smem_addr(As + (warp_m + (lane & 15)) * CONV_LD + 8 * (lane >> 4));
    const unsigned b_addr =
        smem_addr(Bs + (warp_n + (lane & 7) + 8 * (lane >> 4)) * CONV_LD + 8 * ((lane >> 3) & 1));

    ConvStage stage;
    conv_load_tile(stage, 0, x, snake_alpha, snake_beta, w, n, cin, K, dilation, pad, row0, col0, row_lo, row_hi);
    for (int k0 = 0; k0 < K; k0 += CONV_BK) {
        conv_store_tile(stage, snake, As, Bs);
        __syncthreads();
        if (k0 + CONV_BK < K) {
            conv_load_tile(stage, k0 + CONV_BK, x, snake_alpha, snake_beta, w, n, cin, K, dilation, pad, row0, col0,
                           row_lo, row_hi);
        }
#pragma unroll
        for (int ks = 0; ks < CONV_BK; ks += 16) {
            // bf[nf] = {b0, b1} of column tile nf: one ldmatrix.x4 per two column tiles.
            unsigned bf[4][2];
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                unsigned r[4];
                ldmatrix_x4(r, b_addr + (p * 16 * CONV_LD + ks) * 2);
                bf[2 * p][0] = r[0];
                bf[2 * p][1] = r[1];
                bf[2 * p + 1][0] = r[2];
                bf[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int mf = 0; mf < 4; ++mf) {
                unsigned af[4];
                ldmatrix_x4(af, a_addr + (mf * 16 * CONV_LD + ks) * 2);
#pragma unroll
                for (int nf = 0; nf < 4; ++nf) mma_16816(acc[mf][nf], af, bf[nf][0], bf[nf][1]);
            }
        }
        __syncthreads();
    }

    // Epilogue: bias + residual, f32 out. c0, c1: row g, columns 2t, 2t + 1; c2, c3: row g + 8.
#pragma unroll
    for (int mf = 0; mf < 4; ++mf) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            int orow = row_out[warp_m + mf * 16 + g + 8 * half];
            if (orow < 0) continue;
            long long base = (long long)orow * n;
#pragma unroll
            for (int nf = 0; nf < 4; ++nf) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    int col = col0 + warp_n + nf * 8 + 2 * t + e;
                    if (col < n) {
                        float v = acc[mf][nf][2 * half + e];
                        if (bias != nullptr) v += bias[col];
                        if (residual != nullptr) v += residual[base + col];
                        out[base + col] = v;
                    }
                }
            }
        }
    }
}

// SnakeBeta per column: x and out [rows, cols], alpha and beta [cols] (log scale).
// 1-D grid-stride over elements, 256 threads per block, any grid size.
extern "C" __global__ void snake_beta_f32(const float* __restrict__ x, const float* __restrict__ alpha,
                                          const float* __restrict__ beta, float* __restrict__ out, long long n,
                                          long long cols) {
    GRID_STRIDE(i, n) {
        long long c = i % cols;
        float a = expf(alpha[c]), inv_b = 1.0f / (expf(beta[c]) + 1e-9f);
        float s = sinf(a * x[i]);
        out[i] = x[i] + inv_b * s * s;
    }
}
