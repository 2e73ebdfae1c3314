// layer_norm.cu: LayerNorm with optional adaLN modulation, and the adaLN gated
// residual (CPU twins in src/backend/cpu/norm.rs).
//
// - layer_norm: y = (x - mean) / sqrt(var + eps) * gamma + beta per row (biased
//   variance, two passes over the row: mean, then sum of squared deviations,
//   in f32 with a warp tree reduction); with a modulation table,
//   y = y * (1 + scale) + shift, where scale/shift are row b of `table`
//   ([B, table_cols], columns scale_offset.. and shift_offset..) for the rows of
//   sequence b (`offsets`).
// - gated_residual: out = residual + branch * sigmoid(1 - gate), gate from row b
//   of `table` at gate_offset for the rows of sequence b (b from the row ->
//   sequence map `sequences`, int32 [rows], uploaded once per graph).
//
// Layout: row-major [rows, cols]; x, residual, gamma, beta, table f32, offsets
// int32 [count + 1] (cumulative rows). The _f16 variants keep a block
// activation in fp16 (src/graph: `DType`): layer_norm_f16 writes its output
// as fp16 (the next Linear's GEMM input, with no conversion pass),
// gated_residual_f16 reads an fp16 branch; statistics and arithmetic stay f32,
// and an fp16 value is rounded once, at its store.
// Launch: layer_norm: one warp per row, 4 warps (128 threads) per block, grid
// ceil(rows / 4), its row's sequence by binary search once per row;
// gated_residual: 2-D grid-stride (ROW_STRIDE, COL_STRIDE) over [rows, cols],
// 256 threads per block as (x: columns, y: rows) = (tx, 256 / tx), tx = the
// power of two >= cols in 32..256 (`CudaBackend::launch_rows`), no element
// index divided; rows < 2^31.
// (todo: one pass with the row in registers for cols known at compile time.)

#include "common.cuh"

// An element of an f32 or fp16 tensor, as f32; and the store of an f32 value.
__device__ __forceinline__ float load_value(const float* p) { return *p; }
__device__ __forceinline__ float load_value(const unsigned short* p) { return f16_to_f32(*p); }
__device__ __forceinline__ void store_value(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_value(unsigned short* p, float v) { *p = f32_to_f16_rn(v); }

// `table` may be null (no modulation); then offsets is ignored.
template <typename Out>
__device__ __forceinline__ void layer_norm(const float* __restrict__ x, const float* __restrict__ gamma,
                                           const float* __restrict__ beta, float eps, long long rows, int cols,
                                           const float* __restrict__ table, int table_cols, int scale_offset,
                                           int shift_offset, const int* __restrict__ offsets, int count,
                                           Out* __restrict__ out) {
    long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + row * cols;
    Out* yr = out + row * cols;

    float sum = 0.0f;
    for (int c = lane; c < cols; c += 32) sum += xr[c];
    float mean = warp_sum(sum) / (float)cols;
    float sq = 0.0f;
    for (int c = lane; c < cols; c += 32) {
        float d = xr[c] - mean;
        sq += d * d;
    }
    float var = warp_sum(sq) / (float)cols;
    float rstd = rsqrtf(var + eps);

    const float* scale = nullptr;
    const float* shift = nullptr;
    if (table != nullptr) {
        const float* trow = table + (long long)sequence_of_row(offsets, count, row) * table_cols;
        scale = trow + scale_offset;
        shift = trow + shift_offset;
    }
    for (int c = lane; c < cols; c += 32) {
        float y = (xr[c] - mean) * rstd * gamma[c] + beta[c];
        if (table != nullptr) y = y * (1.0f + scale[c]) + shift[c];
        store_value(yr + c, y);
    }
}

extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float eps, long long rows, int cols,
                                          const float* __restrict__ table, int table_cols, int scale_offset,
                                          int shift_offset, const int* __restrict__ offsets, int count,
                                          float* __restrict__ out) {
    layer_norm(x, gamma, beta, eps, rows, cols, table, table_cols, scale_offset, shift_offset, offsets, count, out);
}

extern "C" __global__ void layer_norm_f16(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float eps, long long rows, int cols,
                                          const float* __restrict__ table, int table_cols, int scale_offset,
                                          int shift_offset, const int* __restrict__ offsets, int count,
                                          unsigned short* __restrict__ out) {
    layer_norm(x, gamma, beta, eps, rows, cols, table, table_cols, scale_offset, shift_offset, offsets, count, out);
}

// The gate row of row r is row sequences[r] of `table` (the row -> sequence
// map, int32 [rows], uploaded once per graph by `prepare`); rows < 2^31.
template <typename Branch>
__device__ __forceinline__ void gated_residual(const Branch* __restrict__ branch, const float* __restrict__ residual,
                                               int rows, long long cols, const float* __restrict__ table,
                                               int table_cols, int gate_offset, const int* __restrict__ sequences,
                                               float* __restrict__ out) {
    ROW_STRIDE(r, rows) {
        const float* gate = table + (long long)sequences[r] * table_cols + gate_offset;
        const long long base = r * cols;
        COL_STRIDE(c, cols) {
            const float g = 1.0f / (1.0f + expf(-(1.0f - gate[c])));
            out[base + c] = residual[base + c] + load_value(branch + base + c) * g;
        }
    }
}

extern "C" __global__ void gated_residual_f32(const float* __restrict__ branch, const float* __restrict__ residual,
                                              int rows, long long cols, const float* __restrict__ table,
                                              int table_cols, int gate_offset, const int* __restrict__ sequences,
                                              float* __restrict__ out) {
    gated_residual(branch, residual, rows, cols, table, table_cols, gate_offset, sequences, out);
}

extern "C" __global__ void gated_residual_f16(const unsigned short* __restrict__ branch,
                                              const float* __restrict__ residual, int rows, long long cols,
                                              const float* __restrict__ table, int table_cols, int gate_offset,
                                              const int* __restrict__ sequences, float* __restrict__ out) {
    gated_residual(branch, residual, rows, cols, table, table_cols, gate_offset, sequences, out);
}
