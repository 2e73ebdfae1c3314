// attention.cu: non-causal multi-head attention over a packed batch of
// variable-length sequences, with grouped-query heads and optional RoPE on
// load (CPU twin: src/backend/cpu/attention.rs).
//
// Computes, for every sequence b, query head h (kv head h / (heads / kv_heads))
// and query row i of b: out[i, h] = softmax_j(scale * q_i . k_j) v_j over the
// keys j of sequence b, with an online softmax (running max and sum, f32).
// RoPE (when inv_freq is not null) rotates the first rotary_dim dims of q and
// k by angle position * inv_freq[d mod rotary_dim/2], position counted from 0
// at the start of each sequence, angles and sin/cos in f64 like the CPU:
// v[d] = r[d] cos - r[d + half] sin, v[d + half] = r[d + half] cos + r[d] sin.
//
// Layout: q, k, v point at the first column of their head block inside a
// row-major f32 matrix of ld q_ld / k_ld / v_ld elements per row (e.g. the
// q, k and v parts of one fused qkv projection); head j is columns
// j*head_dim..(j+1)*head_dim of its block. out is [rows, heads*head_dim],
// row stride out_ld. q_offsets / kv_offsets: int32 [count + 1] cumulative rows.
// head_dim <= 128 (4 dims per lane).
//
// Launch: grid (ceil(max query length / 16), heads, count), 128 threads
// (4 warps); each warp owns 4 queries. Keys are staged 32 at a time in shared
// memory (K with a padded row against bank conflicts, V, RoPE applied on
// load); lane j scores key j of the tile, the warp reduces max and sum with
// shuffles, and each lane accumulates the output dims lane, lane + 32, ...
// Dynamic shared memory: (32 (head_dim + 1) + 32 head_dim + 16 head_dim + 4*32) floats
// (20.6 KiB at head_dim 64, 40.6 KiB at 128: under the 48 KiB that needs no opt-in).
// This is the simple correct kernel; the fused tensor-core kernel is a later issue.

#include "common.cuh"

#define KEYS_PER_TILE 32
#define WARPS 4
#define QUERIES_PER_WARP 4
#define QUERIES_PER_BLOCK (WARPS * QUERIES_PER_WARP)
#define MAX_DIMS_PER_LANE 4
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Element d of a head vector `src` (head_dim long) after RoPE at `position`.
__device__ __forceinline__ float rope_element(const float* __restrict__ src, int d, int position,
                                              const float* __restrict__ inv_freq, int rotary_dim) {
    if (inv_freq == nullptr || d >= rotary_dim) return src[d];
    int half = rotary_dim / 2;
    int k = d < half ? d : d - half;
    double s, c;
    sincos((double)position * (double)inv_freq[k], &s, &c);
    double a = src[k], b = src[k + half];
    return d < half ? (float)(a * c - b * s) : (float)(b * c + a * s);
}

extern "C" __global__ void __launch_bounds__(128) attention_f32(
    const float* __restrict__ q, int q_ld, const float* __restrict__ k, int k_ld, const float* __restrict__ v, int v_ld,
    const int* __restrict__ q_offsets, const int* __restrict__ kv_offsets, int heads, int kv_heads, int head_dim,
    float scale, const float* __restrict__ inv_freq, int rotary_dim, float* __restrict__ out, int out_ld) {
    extern __shared__ float smem[];
    const int kld = head_dim + 1;
    float* ks = smem;                                  // [KEYS_PER_TILE][head_dim + 1]
    float* vs = ks + KEYS_PER_TILE * kld;              // [KEYS_PER_TILE][head_dim]
    float* qs = vs + KEYS_PER_TILE * head_dim;         // [QUERIES_PER_BLOCK][head_dim]
    float* ps = qs + QUERIES_PER_BLOCK * head_dim;     // [WARPS][32]

    const int b = blockIdx.z, h = blockIdx.y;
    const int kvh = h / (heads / kv_heads);
    const int q_start = q_offsets[b], q_len = q_offsets[b + 1] - q_start;
    const int kv_start = kv_offsets[b], kv_len = kv_offsets[b + 1] - kv_start;
    const int q0 = blockIdx.x * QUERIES_PER_BLOCK;
    if (q0 >= q_len) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;

    // Stage this block's queries (rotated).
    for (int e = threadIdx.x; e < QUERIES_PER_BLOCK * head_dim; e += blockDim.x) {
        int i = e / head_dim, d = e - i * head_dim;
        int qi = q0 + i;
        float val = 0.0f;
        if (qi < q_len) {
            const float* src = q + (long long)(q_start + qi) * q_ld + h * head_dim;
            val = rope_element(src, d, qi, inv_freq, rotary_dim);
        }
        qs[e] = val;
    }

    float m[QUERIES_PER_WARP], l[QUERIES_PER_WARP], acc[QUERIES_PER_WARP][MAX_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < QUERIES_PER_WARP; i++) {
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int t = 0; t < MAX_DIMS_PER_LANE; t++) acc[i][t] = 0.0f;
    }

    for (int j0 = 0; j0 < kv_len; j0 += KEYS_PER_TILE) {
        __syncthreads();  // previous tile consumed (and, the first time, queries staged)
        for (int e = threadIdx.x; e < KEYS_PER_TILE * head_dim; e += blockDim.x) {
            int j = e / head_dim, d = e - j * head_dim;
            int kj = j0 + j;
            float kval = 0.0f, vval = 0.0f;
            if (kj < kv_len) {
                long long row = kv_start + kj;
                kval = rope_element(k + row * k_ld + kvh * head_dim, d, kj, inv_freq, rotary_dim);
                vval = v[row * v_ld + kvh * head_dim + d];
            }
            ks[j * kld + d] = kval;
            vs[j * head_dim + d] = vval;
        }
        __syncthreads();

        const bool key_valid = j0 + lane < kv_len;
        const int tile_keys = min(KEYS_PER_TILE, kv_len - j0);
#pragma unroll
        for (int i = 0; i < QUERIES_PER_WARP; i++) {
            const int qi = warp * QUERIES_PER_WARP + i;  // query slot in the block
            if (q0 + qi >= q_len) break;                 // warp-uniform
            const float* qrow = qs + qi * head_dim;
            const float* krow = ks + lane * kld;
            float s = 0.0f;
            for (int d = 0; d < head_dim; d++) s += qrow[d] * krow[d];
            s = key_valid ? s * scale : NEG_INF;
            float m_new = fmaxf(m[i], warp_max(s));
            float p = key_valid ? expf(s - m_new) : 0.0f;
            float correction = expf(m[i] - m_new);  // 0 on the first tile (m = -inf)
            l[i] = l[i] * correction + warp_sum(p);
            m[i] = m_new;
            ps[warp * 32 + lane] = p;
            __syncwarp();
#pragma unroll
            for (int t = 0; t < MAX_DIMS_PER_LANE; t++) {
                int d = lane + 32 * t;
                float a = acc[i][t] * correction;
                if (d < head_dim) {
                    for (int j = 0; j < tile_keys; j++) a += ps[warp * 32 + j] * vs[j * head_dim + d];
                }
                acc[i][t] = a;
            }
            __syncwarp();
        }
    }

#pragma unroll
    for (int i = 0; i < QUERIES_PER_WARP; i++) {
        const int qi = q0 + warp * QUERIES_PER_WARP + i;
        if (qi >= q_len) break;
        // No keys at all: the CPU's GEMM over an empty key set gives zeros.
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        float* orow = out + (long long)(q_start + qi) * out_ld + h * head_dim;
#pragma unroll
        for (int t = 0; t < MAX_DIMS_PER_LANE; t++) {
            int d = lane + 32 * t;
            if (d < head_dim) orow[d] = acc[i][t] * inv;
        }
    }
}
