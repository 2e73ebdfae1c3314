// sampler.cu: the sampler's element-wise ops (CPU twins in
// src/backend/cpu/sampler_ops.rs). Per-step scalars are read from the device
// (the `scalars` tensor of the step graph, written by the host in f32 from
// f64 math), so a step never needs new kernel arguments.
//
// Every request of a batch has its own row of scalars (its own step of its
// own schedule): `scalars` is [requests, 9], and x_sequences (int32 [rows of
// x], the row -> request map uploaded once per graph by `prepare`) says which
// rows of x are whose.
//
// - cfg_expand:      out = concat(x, x) * c_in[req]           (out is [2n])
// - cfg_denoise:     denoised = (v_u + (v_c - v_u) * cfg[req]) * c_out[req] + x * c_skip[req],
//                    v = [cond rows; uncond rows], req = the request of x's row
// - dpmpp_3m_update: x = a x + b den + c d1 + d d2 + e z; d2 = d1; d1 = den,
//                    in place, with the row's request's coefficients; a zero
//                    coefficient skips its term (the history and noise buffers
//                    may hold stale or unset values then)
// - select_step_row: out[j, :] = table[step[j % requests], :], step = the
//                    STEP scalar of a request (the row of a constant table,
//                    e.g. timestep embeddings, that this step reads; clamped
//                    to the table, a kernel cannot report an error)
//
// Scalar slots (src/graph/ir.rs, scalar_slot): 0 c_in, 1 c_skip, 2 c_out,
// 3 x, 4 denoised, 5 d1, 6 d2, 7 noise, 8 step (an integer stored as f32).
// Layout: contiguous f32 [rows, cols]; cfg f32 [requests]; rows < 2^31.
// Launch: cfg_expand, cfg_denoise, dpmpp_3m_update: 2-D grid-stride
// (ROW_STRIDE, COL_STRIDE) over x's [rows, cols], 256 threads per block as
// (x: columns, y: rows) = (tx, 256 / tx), tx = the power of two >= cols in
// 32..256 (`CudaBackend::launch_rows`): a row's request and its scalars are
// read once per row, no element index is divided. select_step_row,
// philox_normal: 1-D grid-stride, 256 threads per block. Any grid size.

#include "common.cuh"

#define SCALAR_COUNT 9

extern "C" __global__ void cfg_expand(const float* __restrict__ x, const float* __restrict__ scalars,
                                      const int* __restrict__ x_sequences, int rows, long long cols,
                                      float* __restrict__ out) {
    const long long n = (long long)rows * cols;
    ROW_STRIDE(r, rows) {
        const float c_in = scalars[x_sequences[r] * SCALAR_COUNT + 0];
        const float* xr = x + r * cols;
        float* yr = out + r * cols;
        COL_STRIDE(c, cols) {
            const float v = xr[c] * c_in;
            yr[c] = v;
            yr[n + c] = v;
        }
    }
}

extern "C" __global__ void cfg_denoise(const float* __restrict__ v, const float* __restrict__ x,
                                       const float* __restrict__ scalars, const int* __restrict__ x_sequences,
                                       const float* __restrict__ cfg, int rows, long long cols,
                                       float* __restrict__ out) {
    const long long n = (long long)rows * cols;
    ROW_STRIDE(r, rows) {
        const int req = x_sequences[r];
        const float* s = scalars + req * SCALAR_COUNT;
        const float c_skip = s[1], c_out = s[2], scale = cfg[req];
        const long long base = r * cols;
        COL_STRIDE(c, cols) {
            const long long e = base + c;
            const float vc = v[e], vu = v[n + e];
            const float guided = vu + (vc - vu) * scale;
            out[e] = guided * c_out + x[e] * c_skip;
        }
    }
}

extern "C" __global__ void dpmpp_3m_update(float* __restrict__ x, const float* __restrict__ denoised,
                                           float* __restrict__ d1, float* __restrict__ d2,
                                           const float* __restrict__ noise, const float* __restrict__ scalars,
                                           const int* __restrict__ x_sequences, int rows, long long cols) {
    ROW_STRIDE(r, rows) {
        const float* s = scalars + x_sequences[r] * SCALAR_COUNT;
        const float a = s[3], b = s[4], c = s[5], d = s[6], e = s[7];
        const long long base = r * cols;
        COL_STRIDE(j, cols) {
            const long long i = base + j;
            const float den = denoised[i];
            float acc = a * x[i] + b * den;
            if (c != 0.0f) acc += c * d1[i];
            if (d != 0.0f) acc += d * d2[i];
            if (e != 0.0f) acc += e * noise[i];
            x[i] = acc;
            d2[i] = d1[i];
            d1[i] = den;
        }
    }
}

extern "C" __global__ void select_step_row(const float* __restrict__ table, int table_rows,
                                           const float* __restrict__ scalars, int requests,
                                           float* __restrict__ out, long long rows, long long cols) {
    GRID_STRIDE(i, rows * cols) {
        long long j = i / cols;
        // fmaxf turns a NaN step into 0; the host writes exact integers.
        float s = fminf(fmaxf(scalars[(j % requests) * SCALAR_COUNT + 8], 0.0f), (float)(table_rows - 1));
        out[i] = table[(long long)s * cols + (i - j * cols)];
    }
}

// Philox4x32-10 and Box-Muller, identical to src/sampler/rng.rs: the noise of
// one request and stream, written token-major ([latent_len, channels], the
// step graph's layout) from the canonical channel-major element order
// e = c * latent_len + t: block e / 4, lane e % 4, counter (block lo, block hi,
// stream, 0), key (seed lo, seed hi); u = (w + 0.5) / 2^32 and the transform in f64.
__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned int hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

extern "C" __global__ void philox_normal(unsigned int seed_lo, unsigned int seed_hi, unsigned int stream,
                                         long long latent_len, long long channels, float* __restrict__ out) {
    GRID_STRIDE(i, latent_len * channels) {
        long long t = i / channels, ch = i - t * channels;
        unsigned long long e = (unsigned long long)(ch * latent_len + t);
        unsigned long long block = e >> 2;
        int lane = (int)(e & 3);
        unsigned int w[4] = {(unsigned int)block, (unsigned int)(block >> 32), stream, 0u};
        philox4x32_10(w, seed_lo, seed_hi);
        int pair = lane >> 1;
        double u0 = ((double)w[2 * pair] + 0.5) * (1.0 / 4294967296.0);
        double u1 = ((double)w[2 * pair + 1] + 0.5) * (1.0 / 4294967296.0);
        double r = sqrt(-2.0 * log(u0));
        double s, c;
        sincos(2.0 * 3.141592653589793 * u1, &s, &c);
        out[i] = (float)((lane & 1) ? r * s : r * c);
    }
}
