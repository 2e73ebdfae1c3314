// flash_attention.cu: fused non-causal attention for head_dim 64 in the style
// of FlashAttention-2, on tensor cores (mma.sync m16n8k16, fp16 operands, f32
// accumulation), over a packed batch of variable-length sequences, with
// grouped-query heads and RoPE applied on load. Same semantics as
// attention.cu (the f32 kernel kept for other head dims) and the CPU twin
// src/backend/cpu/attention.rs:
//   out[i, h] = softmax_j(scale * q_i . k_j) v_j  over the keys j of i's sequence,
// query head h reading kv head h / (heads / kv_heads). RoPE (rope_table not
// null) rotates the first rotary_dim dims of q and k at position = row index
// within the sequence: v[d] = r[d] cos - r[d + half] sin, v[d + half] =
// r[d + half] cos + r[d] sin, angle = position * inv_freq[d], half =
// rotary_dim / 2. The angles come from rope_table, [positions][16] (cos, sin)
// pairs computed once per graph on the host in f64 as the CPU twin computes
// them (src/backend/cuda/attention.rs, `rope_table`), so no block evaluates a
// sine: the loader reads the entries of its rows (through L1/L2, 128 bytes per
// position) and rotates in f32.
//
// Layout: q, k, v point at the first column of their head block inside a
// row-major matrix (ld q_ld / k_ld / v_ld elements per row); head j is columns
// j*64..j*64+63. out is [rows, heads*64], row stride out_ld. Two entry points,
// one body: flash_attention_hd64 reads and writes f32, flash_attention_hd64_f16
// fp16 (the DiT's block activations on CUDA: half the bytes, and the loader's
// fp16 rounding of an fp16 value that is not rotated is exact). q_offsets /
// kv_offsets: int32 [count + 1] cumulative rows of each sequence. tile_starts:
// int32 [count + 1] cumulative numbers of 64-query tiles (ceil(q_len / 64)).
// Needs (checked by the launcher, src/backend/cuda/attention.rs): q, k, v
// 16-byte aligned with rows of whole 16-byte chunks (lds multiples of 4 floats
// or 8 halves: float4 loads, 16-byte cp.async copies),
// rotary_dim a multiple of 8 and <= 32 (a table row holds 16 frequencies),
// rope_table 16-byte aligned with a row for every position of the longest
// sequence, out aligned for a 2-element store with an even out_ld.
//
// Launch: grid (total query tiles, heads), 128 threads (4 warps). Block
// (x, h) finds its sequence b by binary search in tile_starts, so a packed batch
// of any number of sequences and lengths needs no padding and no idle blocks
// (and grid.y/z never see the sequence count); consecutive blocks are the query
// tiles of one (sequence, head), which then share K/V in L2.
//
// Tiles: 64 queries per block (each warp owns 16 rows = one mma M), 64 keys per
// step, the full head (64 dims) at once. The Q tile is read 4 elements at a
// time (float4, or 4 halves converted to f32), rotated in f32, rounded to fp16
// and stored in shared memory. K and V tiles: the f32 kernel loads them the
// same way, through registers; the fp16 kernel copies them with cp.async (16
// bytes per copy, no registers, zero-filled past the sequence) into two
// buffers, the next tile's copies in flight while the current one is computed
// (double buffering), then rotates K in shared memory (rotate_tile_f16: the
// same arithmetic as the loader, so the same bits). Rows are padded to
// 72 halves (144 bytes: the 8 rows an ldmatrix phase reads fall on distinct
// banks). Per key tile each warp loads its Q fragments (16 registers) from shared
// memory with ldmatrix and handles the 64 keys in two halves of 32, each with its
// own online-softmax update: S = Q K^T for 32 keys in 16 f32 registers, O in 32
// f32 registers, and the running max and sum of its two rows per thread; P goes
// from the S accumulators straight into the A fragments of the P V mma (FA2's
// register reuse), no T x T matrix anywhere.
// Keys beyond the sequence get score -inf; rows of a partial tile are zero in
// shared memory (so 0 * garbage never makes NaN); query rows beyond the sequence
// are computed on zeros and not written. A sequence with no keys gives zeros
// (like the CPU's empty GEMM).
//
// Resources: static shared memory 3 * 64 * 72 * 2 B (Q, K, V) = 27,648 B for
// the f32 kernel, 5 * 64 * 72 * 2 B = 46,080 B for the fp16 one (two K/V
// buffers), under the 48 KB that needs no opt-in; registers capped at 128 by
// __launch_bounds__(128, 4) (ptxas, NVRTC 13.5: 127-128 for sm_80 and sm_90,
// 0 spills; see `lova-fast kernels --check`). Occupancy: 4 blocks = 16 warps
// per SM, limited by registers (4 * 128 threads * 128 regs = 64 K regs); shared
// memory allows that on an H100 (4 * 45 KiB of 228 KB) but 3 blocks of the fp16
// kernel on an A100 (164 KB): there double buffering costs a quarter of the
// resident warps (measure before keeping it on sm_80). The register cap is
// tight: the S halves, the Q fragments reloaded per tile, 4 (not 8) rows in
// flight in the loader, the row indices recomputed after the loop and K/V
// kept as 32-bit shared-window addresses are what keep ptxas from spilling.
// Why 64 x 64: a 30 s clip has 647 tokens: 11 query tiles x 24 heads x 2 = 528
// blocks = exactly one wave of 4 blocks on 132 SMs; 128-query tiles would need 2
// waves of which the second is nearly empty, and 8 warps x 16 rows or 32 rows per
// warp would need more registers than 4 blocks per SM allow.
// Honest limits (todo - measure on a GPU): rotating K once per (query tile,
// head) repeats work that a pre-pass writing rotated fp16 K once could avoid,
// but that pass would move the whole of K through memory twice more per step
// (src/roofline: about 0.4 GB per 30 s step), where the rotation here costs
// only arithmetic. mma.sync cannot reach an H100's dense peak (only wgmma
// can); expect well under the 50% target there.

#include "common.cuh"

#define FA_HEAD_DIM 64
#define FA_BLOCK_M 64
#define FA_BLOCK_N 64
#define FA_SUB_N 32 /* keys per online-softmax update */
#define FA_MAX_ROPE_FREQS 16 /* rotary_dim <= 32: entries per rope_table row */
#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * 32)
#define FA_LDS 72 /* shared-memory row stride in halves: 64 + 8 padding */
#define FA_NEG_INF __int_as_float(0xff800000)

// As ldmatrix_x4, transposed: lane t receives rows 2 (t % 4) and 2 (t % 4) + 1 of column t / 4.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Four consecutive elements of a row as f32: a float4 of an f32 tensor, or four
// halves (8 bytes) of an fp16 one; the pointer is aligned for that load.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const unsigned short* p) {
    const uint2 h = *reinterpret_cast<const uint2*>(p);
    return make_float4(f16_to_f32(h.x & 0xffffu), f16_to_f32(h.x >> 16), f16_to_f32(h.y & 0xffffu),
                       f16_to_f32(h.y >> 16));
}

// Two consecutive output elements: a float2, or an fp16x2 word rounded as pack_half2 rounds.
__device__ __forceinline__ void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store2(unsigned short* p, float a, float b) {
    *reinterpret_cast<unsigned*>(p) = pack_half2(a, b);
}

// Loads rows [0, rows) of a 64-row tile (row-major f32 or fp16, `ld` elements
// per row, starting at the head's column 0) into `dst` ([64][FA_LDS] fp16),
// rotating the first rotary_dim dims in f32 with the angles of `rope` (the
// rope_table row of the tile's first position) when `rotate`; rows >= rows are
// zero. Thread t handles dims
// 4 (t % 16) .. +3 of rows t / 16 + 8 i: a half-warp reads one row (256 bytes
// of f32, 128 of fp16).
template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, int ld, int rows, bool rotate,
                                          const float2* __restrict__ rope, int rotary_dim,
                                          unsigned short* __restrict__ dst) {
    const int c = (threadIdx.x & 15) * 4;
    const int half = rotary_dim / 2;
#pragma unroll 4  // 4 rows in flight per thread; all 8 made ptxas spill (sm_90) at the 128-register cap
    for (int i = 0; i < FA_BLOCK_M / (FA_THREADS / 16); i++) {
        const int r = (threadIdx.x >> 4) + i * (FA_THREADS / 16);
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < rows) {
            const T* row = src + (long long)r * ld;
            x = load4(row + c);
            if (rotate && c < rotary_dim) {
                // The partner dims are 4 aligned elements too (half is a multiple of 4).
                const bool first = c < half;
                const int f0 = first ? c : c - half;
                const float4 y = load4(row + (first ? c + half : c - half));
                // (cos, sin) of frequencies f0, f0 + 1 and f0 + 2, f0 + 3: 16-byte aligned (f0 % 4 == 0).
                const float4 a = __ldg(reinterpret_cast<const float4*>(rope + r * FA_MAX_ROPE_FREQS + f0));
                const float4 b = __ldg(reinterpret_cast<const float4*>(rope + r * FA_MAX_ROPE_FREQS + f0 + 2));
                const float sign = first ? -1.0f : 1.0f;  // first half: x cos - y sin; second: x cos + y sin
                x.x = fmaf(x.x, a.x, sign * y.x * a.y);
                x.y = fmaf(x.y, a.z, sign * y.y * a.w);
                x.z = fmaf(x.z, b.x, sign * y.z * b.y);
                x.w = fmaf(x.w, b.z, sign * y.w * b.w);
            }
        }
        uint2 packed = make_uint2(pack_half2(x.x, x.y), pack_half2(x.z, x.w));
        *reinterpret_cast<uint2*>(dst + r * FA_LDS + c) = packed;  // 8-byte aligned: c % 4 == 0, 144-byte rows
    }
}

// cp.async.cg (sm_80+): 16 bytes from global to shared memory without
// registers, zero-filling the bytes past src_bytes (0: a zero row, no read);
// both addresses 16-byte aligned. Copies issued between two commits form a
// group; wait_group 1 waits for every group but the newest.
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_async_wait_all_but_newest() { asm volatile("cp.async.wait_group %0;" ::"n"(1)); }

// Issues the copy of rows [0, rows) of a 64-row fp16 tile (`ld` halves per
// row, 16-byte aligned rows) into `dst` ([64][FA_LDS]); rows >= rows are
// zero-filled. Thread t copies the 16-byte chunks t, t + 128, ... (8 per row).
__device__ __forceinline__ void issue_tile_f16(const unsigned short* __restrict__ src, int ld, int rows,
                                               unsigned short* __restrict__ dst) {
#pragma unroll
    for (int i = 0; i < FA_BLOCK_N * 8 / FA_THREADS; i++) {
        const int e = threadIdx.x + i * FA_THREADS;
        const int r = e >> 3, c = (e & 7) * 8;
        const bool valid = r < rows;
        cp_async_16(smem_addr(dst + r * FA_LDS + c), valid ? src + (long long)r * ld + c : src, valid ? 16 : 0);
    }
}

// Rotates the first rotary_dim dims of rows [0, rows) of an fp16 tile in
// shared memory in place, with the angles of `rope` (the rope_table row of the
// tile's first position): the rotation load_tile applies on its way in, on the
// same values (an fp16 value, rotated in f32, rounded once), so both paths give
// the same bits. One thread takes 4 dims of the first half and their partners.
__device__ __forceinline__ void rotate_tile_f16(unsigned short* __restrict__ tile, int rows,
                                                const float2* __restrict__ rope, int rotary_dim) {
    const int half = rotary_dim / 2, quads = half / 4;
    for (int e = threadIdx.x; e < rows * quads; e += FA_THREADS) {
        const int r = e / quads, c = (e - r * quads) * 4;
        unsigned short* x = tile + r * FA_LDS + c;
        const float4 a = load4(x), y = load4(x + half);
        const float4 t0 = __ldg(reinterpret_cast<const float4*>(rope + r * FA_MAX_ROPE_FREQS + c));
        const float4 t1 = __ldg(reinterpret_cast<const float4*>(rope + r * FA_MAX_ROPE_FREQS + c + 2));
        // (cos, sin) of dims c, c + 1 in t0, of c + 2, c + 3 in t1; as load_tile: x cos - y sin, y cos + x sin.
        const uint2 first = make_uint2(pack_half2(fmaf(a.x, t0.x, -y.x * t0.y), fmaf(a.y, t0.z, -y.y * t0.w)),
                                       pack_half2(fmaf(a.z, t1.x, -y.z * t1.y), fmaf(a.w, t1.z, -y.w * t1.w)));
        const uint2 second = make_uint2(pack_half2(fmaf(y.x, t0.x, a.x * t0.y), fmaf(y.y, t0.z, a.y * t0.w)),
                                        pack_half2(fmaf(y.z, t1.x, a.z * t1.y), fmaf(y.w, t1.z, a.w * t1.w)));
        *reinterpret_cast<uint2*>(x) = first;
        *reinterpret_cast<uint2*>(x + half) = second;
    }
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// A block's shared memory: the Q, K and V tiles as fp16 (rows padded to
// FA_LDS halves); `BUFFERS` K/V tile pairs (2: the fp16 kernel's double buffer).
template <int BUFFERS>
struct FlashShared {
    unsigned short q[FA_BLOCK_M * FA_LDS];
    unsigned short k[BUFFERS][FA_BLOCK_N * FA_LDS];
    unsigned short v[BUFFERS][FA_BLOCK_N * FA_LDS];
};

// The kernel body for q, k, v and out of element type T (float or fp16 bits).
// The shared memory is declared by each entry point and passed in: a
// __shared__ local of a template has vague linkage, which the virtual GPU
// (tools/vgpu, where __shared__ becomes a static in one linker section)
// cannot place in its shared window.
template <typename T, bool ASYNC>
__device__ __forceinline__ void flash_attention(const T* __restrict__ q, int q_ld, const T* __restrict__ k, int k_ld,
                                                const T* __restrict__ v, int v_ld, const int* __restrict__ q_offsets,
                                                const int* __restrict__ kv_offsets,
                                                const int* __restrict__ tile_starts, int count, int heads,
                                                int kv_heads, float scale, const float2* __restrict__ rope_table,
                                                int rotary_dim, T* __restrict__ out, int out_ld,
                                                FlashShared<ASYNC ? 2 : 1>& smem) {
    unsigned short* qs = smem.q;

    // Which sequence: the largest b with tile_starts[b] <= blockIdx.x (empty
    // sequences have no tiles); tile_starts is cumulative like row offsets.
    const int x = blockIdx.x;
    const int b = sequence_of_row(tile_starts, count, x);
    const int h = blockIdx.y;
    const int kvh = h / (heads / kv_heads);
    const int q_start = q_offsets[b], q_len = q_offsets[b + 1] - q_start;
    const int kv_start = kv_offsets[b], kv_len = kv_offsets[b + 1] - kv_start;
    const int q0 = (x - tile_starts[b]) * FA_BLOCK_M;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tig = lane & 3;  // mma groupID and thread-in-group

    const bool rope = rope_table != nullptr && rotary_dim > 0;
    // The loader reads the table from the rows of a tile's first position (only with RoPE: no table without).
    load_tile(q + (long long)(q_start + q0) * q_ld + h * FA_HEAD_DIM, q_ld, min(FA_BLOCK_M, q_len - q0), rope,
              rope_table + (rope ? q0 * FA_MAX_ROPE_FREQS : 0), rotary_dim, qs);
    __syncthreads();

    const float scale_log2 = scale * 1.4426950408889634f;  // softmax in base 2: exp(x) = exp2(x log2 e)
    float m_run[2] = {FA_NEG_INF, FA_NEG_INF};  // running max (base-2 scaled) of rows g and g + 8
    float l_run[2] = {0.0f, 0.0f};              // this thread's part of the running sum of those rows
    float o[8][4];                              // O: dim tile dt, [row g: dims 8 dt + 2 tig, +1; row g + 8: same]
#pragma unroll
    for (int dt = 0; dt < 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;

    const T* kbase = k + (long long)kv_start * k_ld + kvh * FA_HEAD_DIM;
    const T* vbase = v + (long long)kv_start * v_ld + kvh * FA_HEAD_DIM;
    if constexpr (ASYNC) {
        // The first K/V tile's copies, before the loop (none for an empty key set).
        if (kv_len > 0) {
            issue_tile_f16(kbase, k_ld, min(FA_BLOCK_N, kv_len), smem.k[0]);
            issue_tile_f16(vbase, v_ld, min(FA_BLOCK_N, kv_len), smem.v[0]);
            cp_async_commit();
        }
    }
    for (int j0 = 0, it = 0; j0 < kv_len; j0 += FA_BLOCK_N, it++) {
        const int tile_keys = min(FA_BLOCK_N, kv_len - j0);
        // This tile's K and V as shared-window addresses (32-bit: cheaper to keep than pointers).
        const unsigned ks = smem_addr(smem.k[ASYNC ? it & 1 : 0]);
        const unsigned vs = smem_addr(smem.v[ASYNC ? it & 1 : 0]);
        __syncthreads();  // every warp is done with the previous K/V tile (the buffer the next copy overwrites)
        if constexpr (ASYNC) {
            // Double buffering: copy tile it + 1 into the other buffer while tile it is computed.
            if (j0 + FA_BLOCK_N < kv_len) {
                const int next = min(FA_BLOCK_N, kv_len - j0 - FA_BLOCK_N);
                issue_tile_f16(kbase + (long long)(j0 + FA_BLOCK_N) * k_ld, k_ld, next, smem.k[(it + 1) & 1]);
                issue_tile_f16(vbase + (long long)(j0 + FA_BLOCK_N) * v_ld, v_ld, next, smem.v[(it + 1) & 1]);
            }
            cp_async_commit();  // possibly empty: one group per iteration keeps the count simple
            cp_async_wait_all_but_newest();  // this thread's copies of tile it have landed
            __syncthreads();                 // everyone's have
            if (rope) {
                rotate_tile_f16(smem.k[it & 1], tile_keys, rope_table + j0 * FA_MAX_ROPE_FREQS, rotary_dim);
                __syncthreads();
            }
        } else {
            load_tile(kbase + (long long)j0 * k_ld, k_ld, tile_keys, rope,
                      rope_table + (rope ? j0 * FA_MAX_ROPE_FREQS : 0), rotary_dim, smem.k[0]);
            load_tile(vbase + (long long)j0 * v_ld, v_ld, tile_keys, false, rope_table, 0, smem.v[0]);
            __syncthreads();
        }

        // A fragments of this warp's 16 query rows, 4 k-steps of 16 dims:
        // ldmatrix matrix m = lane / 8 is rows (m & 1) * 8.., dims (m >> 1) * 8.. of the k-step, giving
        // a[0] (row g, dims 2 tig..), a[1] (row g + 8), a[2] (row g, dims 8 + 2 tig..), a[3] (row g + 8, dims 8 + ..).
        unsigned qf[4][4];
        {
            const int row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
            const int col = (lane >> 4) * 8;
#pragma unroll
            for (int kk = 0; kk < 4; kk++) ldmatrix_x4(qf[kk], smem_addr(qs + row * FA_LDS + kk * 16 + col));
        }

        // The 64 keys of the tile in two halves of 32 (FA_SUB_N), each with its own online-softmax
        // update: S for 32 keys is 16 registers, which keeps the kernel within 128 registers.
#pragma unroll
        for (int sub = 0; sub < FA_BLOCK_N / FA_SUB_N; sub++) {
            // S = Q K^T: n-tile nt is keys sub * 32 + 8 nt .. + 7. B fragment (k = dim, n = key):
            // b0 = K[key][dims 16 kk + 2 tig, +1] for key = sub * 32 + 8 nt + g, b1 = the same 8 dims
            // later, i.e. rows of ks read without transposition. ldmatrix matrix m is those 8 keys,
            // dims 32 p + 8 m..: r[0], r[1] = b0, b1 of k-step 2p; r[2], r[3] = b0, b1 of k-step 2p + 1.
            float s[4][4];
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
                const int key = sub * FA_SUB_N + nt * 8 + (lane & 7);
#pragma unroll
                for (int p = 0; p < 2; p++) {
                    unsigned kb[4];
                    ldmatrix_x4(kb, ks + 2 * (key * FA_LDS + p * 32 + (lane >> 3) * 8));
                    mma_16816(s[nt], qf[2 * p], kb[0], kb[1]);
                    mma_16816(s[nt], qf[2 * p + 1], kb[2], kb[3]);
                }
            }

            // Online softmax. s[nt][0..1] are row g, keys sub * 32 + 8 nt + 2 tig, +1; s[nt][2..3] row g + 8.
            float m_new[2] = {m_run[0], m_run[1]};
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = sub * FA_SUB_N + nt * 8 + tig * 2 + (e & 1);
                    float val = key < tile_keys ? s[nt][e] * scale_log2 : FA_NEG_INF;
                    s[nt][e] = val;
                    m_new[e >> 1] = fmaxf(m_new[e >> 1], val);
                }
            }
            float corr[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                // The four threads of a quad hold the 32 keys of a row. Key j0 is valid and comes
                // first, so m_new is finite from the first half on (later halves may be all masked).
                m_new[r] = quad_max(m_new[r]);
                corr[r] = exp2f(m_run[r] - m_new[r]);  // 0 on the first half-tile (m_run = -inf)
                m_run[r] = m_new[r];
                l_run[r] *= corr[r];
            }
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float p = exp2f(s[nt][e] - m_new[e >> 1]);  // masked keys: exp2(-inf) = 0
                    s[nt][e] = p;
                    l_run[e >> 1] += p;
                }
            }
#pragma unroll
            for (int dt = 0; dt < 8; dt++) {
                o[dt][0] *= corr[0];
                o[dt][1] *= corr[0];
                o[dt][2] *= corr[1];
                o[dt][3] *= corr[1];
            }

            // O += P V over 2 k-steps of 16 keys. A fragment of k-step kk from the S accumulators of
            // n-tiles 2 kk (keys 2 tig.. of the k-step) and 2 kk + 1 (keys 8 + 2 tig..):
            // a[0] = row g, a[1] = row g + 8, a[2] = row g 8 keys later, a[3] = row g + 8 8 keys later.
            // B fragment (k = key, n = dim): b0 = V[keys 2 tig, +1 of the k-step][dim 8 dt + g], b1 = 8
            // keys later; two rows of vs per register, hence ldmatrix .trans. Matrix m = lane / 8 is
            // keys (m & 1) * 8.. of the k-step, dims 16 p + (m >> 1) * 8..: r[0], r[1] = b0, b1 of dim
            // tile 2p, r[2], r[3] = b0, b1 of dim tile 2p + 1.
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
                unsigned pa[4];
                pa[0] = pack_half2(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_half2(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                const int key = sub * FA_SUB_N + kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    unsigned vb[4];
                    ldmatrix_x4_trans(vb, vs + 2 * (key * FA_LDS + p * 16 + (lane >> 4) * 8));
                    mma_16816(o[2 * p], pa, vb[0], vb[1]);
                    mma_16816(o[2 * p + 1], pa, vb[2], vb[3]);
                }
            }
        }
    }

    // Normalise and write rows g and g + 8 of this warp (the quad's partial sums first).
    // Rows are recomputed from the sequence index here rather than kept live through the loop.
    const int row_in_seq = (x - tile_starts[b]) * FA_BLOCK_M + warp * 16 + g;
    const int row_end = q_offsets[b + 1];
    T* obase = out + (long long)blockIdx.y * FA_HEAD_DIM + tig * 2;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float l = quad_sum(l_run[r]);
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no keys: zeros, like the CPU
        const int qrow = q_offsets[b] + row_in_seq + r * 8;
        if (qrow < row_end) {
            T* orow = obase + (long long)qrow * out_ld;
#pragma unroll
            for (int dt = 0; dt < 8; dt++) store2(orow + dt * 8, o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(FA_THREADS, 4) flash_attention_hd64(
    const float* __restrict__ q, int q_ld, const float* __restrict__ k, int k_ld, const float* __restrict__ v, int v_ld,
    const int* __restrict__ q_offsets, const int* __restrict__ kv_offsets, const int* __restrict__ tile_starts,
    int count, int heads, int kv_heads, float scale, const float2* __restrict__ rope_table, int rotary_dim,
    float* __restrict__ out, int out_ld) {
    __shared__ __align__(16) FlashShared<1> smem;
    flash_attention<float, false>(q, q_ld, k, k_ld, v, v_ld, q_offsets, kv_offsets, tile_starts, count, heads,
                                  kv_heads, scale, rope_table, rotary_dim, out, out_ld, smem);
}

// The same with fp16 q, k, v and out (the DiT's block activations on CUDA).
extern "C" __global__ void __launch_bounds__(FA_THREADS, 4) flash_attention_hd64_f16(
    const unsigned short* __restrict__ q, int q_ld, const unsigned short* __restrict__ k, int k_ld,
    const unsigned short* __restrict__ v, int v_ld, const int* __restrict__ q_offsets,
    const int* __restrict__ kv_offsets, const int* __restrict__ tile_starts, int count, int heads, int kv_heads,
    float scale, const float2* __restrict__ rope_table, int rotary_dim, unsigned short* __restrict__ out,
    int out_ld) {
    __shared__ __align__(16) FlashShared<2> smem;
    flash_attention<unsigned short, true>(q, q_ld, k, k_ld, v, v_ld, q_offsets, kv_offsets, tile_starts, count,
                                          heads, kv_heads, scale, rope_table, rotary_dim, out, out_ld, smem);
}
