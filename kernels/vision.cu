// vision.cu: the CLIP image tower's small ops (CPU twins in
// src/backend/cpu/vision_ops.rs).
//
// - patchify:           images [n, C * S * S] (each image CHW) -> out [n * G^2, C * P * P],
//                       G = S / P: row (i * G + py) * G + px is the P x P patch at grid
//                       position (py, px) of image i, columns in (c, ky, kx) order
//                       (im2col of the stride-P patch-embedding conv).
// - prepend_weight_row: per sequence b: out rows = the weight row (f32 vector), then
//                       rest's rows of b (the class token before the patches).
// - quick_gelu_f32:     out = x * sigmoid(1.702 x), as x / (1 + exp(-1.702 x)) (CLIP's
//                       activation). It runs after the fc1 GEMM, not in its epilogue:
//                       cuBLASLt has no QuickGELU epilogue, and the op costs one read
//                       and one write of [tokens, 4W], small next to the two GEMMs.
// - first_rows:         out row b = the first row of sequence b of x (the class tokens).
//
// Layout: row-major f32 [rows, cols]; sequences as int32 cumulative row offsets
// (count + 1 entries) and, for prepend_weight_row, the output's row -> sequence
// map (int32 [rows], uploaded once per graph by `prepare`; rows < 2^31).
// Launch: patchify, quick_gelu_f32: 1-D grid-stride over output elements, 256
// threads per block; 64-bit element indices. prepend_weight_row, first_rows:
// 2-D grid-stride (ROW_STRIDE, COL_STRIDE) over the output [rows, cols], 256
// threads per block as (x: columns, y: rows) = (tx, 256 / tx), tx = the power
// of two >= cols in 32..256 (`CudaBackend::launch_rows`); no element index is
// divided. Any grid size.

#include "common.cuh"

extern "C" __global__ void patchify(const float* __restrict__ images, int channels, int size, int patch,
                                    float* __restrict__ out, long long n_out) {
    const int grid = size / patch;
    const long long row_len = (long long)channels * patch * patch;
    const long long image_len = (long long)channels * size * size;
    GRID_STRIDE(idx, n_out) {
        long long r = idx / row_len;
        int col = (int)(idx - r * row_len);
        long long image = r / (grid * grid);
        int cell = (int)(r - image * grid * grid);
        int py = cell / grid, px = cell - py * grid;
        int c = col / (patch * patch);
        int rem = col - c * patch * patch;
        int ky = rem / patch, kx = rem - ky * patch;
        out[idx] = images[image * image_len + (long long)c * size * size + (long long)(py * patch + ky) * size +
                          px * patch + kx];
    }
}

extern "C" __global__ void prepend_weight_row(const float* __restrict__ row, const float* __restrict__ rest,
                                              const int* __restrict__ rest_offsets,
                                              const int* __restrict__ out_offsets,
                                              const int* __restrict__ out_sequences, int rows, long long cols,
                                              float* __restrict__ out) {
    ROW_STRIDE(r, rows) {
        const int b = out_sequences[r];
        const long long local = r - out_offsets[b];
        const float* src = local == 0 ? row : rest + (rest_offsets[b] + local - 1) * cols;
        float* yr = out + r * cols;
        COL_STRIDE(c, cols) { yr[c] = src[c]; }
    }
}

extern "C" __global__ void quick_gelu_f32(const float* __restrict__ x, float* __restrict__ out, long long n) {
    GRID_STRIDE(i, n) { out[i] = x[i] / (1.0f + expf(-1.702f * x[i])); }
}

extern "C" __global__ void first_rows(const float* __restrict__ x, const int* __restrict__ offsets, int count,
                                      long long cols, float* __restrict__ out) {
    ROW_STRIDE(b, count) {
        const float* xr = x + (long long)offsets[b] * cols;
        float* yr = out + b * cols;
        COL_STRIDE(c, cols) { yr[c] = xr[c]; }
    }
}
