// elementwise.cu: the DiT's element- and row-wise ops (CPU twins in
// src/backend/cpu/elementwise.rs).
//
// - silu:              out[i] = x[i] * sigmoid(x[i])
// - swiglu:            x [M, 2F] -> out [M, F], out[r, j] = x[r, j] * silu(x[r, F + j])
// - timestep_features: t [B], w [n] -> out [B, 2n] = [cos(2 pi t w), sin(2 pi t w)], angles in f64
// - add_positional_*:  out[r] = x[r] + table[position of r in its sequence] * scale;
//                      the table is f32 or fp16 (matrices are stored as fp16)
// - prepend_row:       per sequence b: out rows = first[b], then rest's rows of b
// - prepend_row_positional_*: prepend_row, then add_positional over the output
//                      sequences, in one pass (the DiT's tokens before its blocks)
// - drop_first_row:    per sequence b: out rows = x's rows of b except the first
//
// Layout: every tensor is row-major [rows, cols] f32 (swiglu_f16: fp16); a packed batch is
// described by cumulative row offsets (int32, count + 1 entries, offsets[0] = 0)
// and a row -> sequence map (int32 [rows], `sequences`/`out_sequences`: the b
// with offsets[b] <= r < offsets[b + 1], empty sequences skipped), both uploaded
// once per graph (`CudaBackend::prepare`).
// Launch: silu, swiglu, timestep_features: 1-D grid-stride over output
// elements, 256 threads per block, any grid size. The positional and
// prepend/drop ops: 2-D grid-stride (ROW_STRIDE, COL_STRIDE) over output
// [rows, cols], 256 threads per block as (x: columns, y: rows) = (tx, 256 / tx),
// tx = the power of two >= cols in 32..256 (`CudaBackend::launch_rows`); a
// row's sequence and source row are read once per row, no element index is
// divided.

#include "common.cuh"

// Matches the CPU's x / (1 + exp(-x)).
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

extern "C" __global__ void silu_f32(const float* __restrict__ x, float* __restrict__ out, long long n) {
    GRID_STRIDE(i, n) { out[i] = silu(x[i]); }
}

extern "C" __global__ void swiglu_f32(const float* __restrict__ x, float* __restrict__ out, long long rows, long long f) {
    GRID_STRIDE(i, rows * f) {
        long long r = i / f, j = i - r * f;
        const float* xr = x + r * 2 * f;
        out[i] = xr[j] * silu(xr[f + j]);
    }
}

// swiglu on fp16 x and out (the DiT's feed-forward on CUDA), two columns per
// thread: f is even (checked by the launcher), so each pair is one 4-byte
// fp16x2 load from each half of the row and one store; f32 arithmetic.
extern "C" __global__ void swiglu_f16(const unsigned short* __restrict__ x, unsigned short* __restrict__ out,
                                      long long rows, long long f) {
    const long long pairs = f / 2;
    GRID_STRIDE(i, rows * pairs) {
        long long r = i / pairs, j = 2 * (i - r * pairs);
        const unsigned short* xr = x + r * 2 * f;
        const unsigned a = *reinterpret_cast<const unsigned*>(xr + j);
        const unsigned gate = *reinterpret_cast<const unsigned*>(xr + f + j);
        const float lo = f16_to_f32(a & 0xffffu) * silu(f16_to_f32(gate & 0xffffu));
        const float hi = f16_to_f32(a >> 16) * silu(f16_to_f32(gate >> 16));
        *reinterpret_cast<unsigned*>(out + r * f + j) = pack_half2(lo, hi);
    }
}

extern "C" __global__ void timestep_features(const float* __restrict__ t, const float* __restrict__ w,
                                             float* __restrict__ out, int batch, int n) {
    GRID_STRIDE(i, (long long)batch * n) {
        int b = (int)(i / n), j = (int)(i - (long long)b * n);
        double a = 2.0 * 3.141592653589793 * (double)t[b] * (double)w[j];
        double s, c;
        sincos(a, &s, &c);
        out[(long long)b * 2 * n + j] = (float)c;
        out[(long long)b * 2 * n + n + j] = (float)s;
    }
}

// A table entry as f32: positional tables are f32, or fp16 where the weight
// is stored as a matrix; one kernel body serves both element types.
__device__ __forceinline__ float table_at(const float* t, long long i) { return t[i]; }
__device__ __forceinline__ float table_at(const unsigned short* t, long long i) { return f16_to_f32(t[i]); }

// The row-wise ops below take each row's sequence from a row -> sequence map
// (`sequences`: int32 [rows], uploaded once per graph by `prepare`) and its
// position in that sequence as r - offsets[b]; rows < 2^31 (the map is int32).
template <typename Table>
__device__ __forceinline__ void add_positional(const float* __restrict__ x, const Table* __restrict__ table,
                                               float scale, const int* __restrict__ offsets,
                                               const int* __restrict__ sequences, int rows, long long cols,
                                               float* __restrict__ out) {
    ROW_STRIDE(r, rows) {
        const long long p = r - offsets[sequences[r]];
        const float* xr = x + r * cols;
        const Table* tr = table + p * cols;
        float* yr = out + r * cols;
        COL_STRIDE(c, cols) { yr[c] = xr[c] + table_at(tr, c) * scale; }
    }
}

extern "C" __global__ void add_positional_f32(const float* __restrict__ x, const float* __restrict__ table, float scale,
                                              const int* __restrict__ offsets, const int* __restrict__ sequences,
                                              int rows, long long cols, float* __restrict__ out) {
    add_positional(x, table, scale, offsets, sequences, rows, cols, out);
}

extern "C" __global__ void add_positional_f16(const float* __restrict__ x, const unsigned short* __restrict__ table,
                                              float scale, const int* __restrict__ offsets,
                                              const int* __restrict__ sequences, int rows, long long cols,
                                              float* __restrict__ out) {
    add_positional(x, table, scale, offsets, sequences, rows, cols, out);
}

// The row prepend_row writes at output row r: first[b] at position 0 of sequence b,
// else rest's row p - 1 of b; *p is r's position in its sequence.
// out_offsets[b + 1] - out_offsets[b] = rest_offsets[b + 1] - rest_offsets[b] + 1.
__device__ __forceinline__ const float* prepended_row(const float* __restrict__ first, const float* __restrict__ rest,
                                                      const int* __restrict__ rest_offsets,
                                                      const int* __restrict__ out_offsets,
                                                      const int* __restrict__ out_sequences, long long cols,
                                                      long long r, long long* p) {
    const int b = out_sequences[r];
    *p = r - out_offsets[b];
    return *p == 0 ? first + (long long)b * cols : rest + (rest_offsets[b] + *p - 1) * cols;
}

extern "C" __global__ void prepend_row(const float* __restrict__ first, const float* __restrict__ rest,
                                       const int* __restrict__ rest_offsets, const int* __restrict__ out_offsets,
                                       const int* __restrict__ out_sequences, int rows, long long cols,
                                       float* __restrict__ out) {
    ROW_STRIDE(r, rows) {
        long long p;
        const float* src = prepended_row(first, rest, rest_offsets, out_offsets, out_sequences, cols, r, &p);
        float* yr = out + r * cols;
        COL_STRIDE(c, cols) { yr[c] = src[c]; }
    }
}

template <typename Table>
__device__ __forceinline__ void prepend_row_positional(const float* __restrict__ first, const float* __restrict__ rest,
                                                       const Table* __restrict__ table, float scale,
                                                       const int* __restrict__ rest_offsets,
                                                       const int* __restrict__ out_offsets,
                                                       const int* __restrict__ out_sequences, int rows,
                                                       long long cols, float* __restrict__ out) {
    ROW_STRIDE(r, rows) {
        long long p;
        const float* src = prepended_row(first, rest, rest_offsets, out_offsets, out_sequences, cols, r, &p);
        const Table* tr = table + p * cols;
        float* yr = out + r * cols;
        COL_STRIDE(c, cols) { yr[c] = src[c] + table_at(tr, c) * scale; }
    }
}

extern "C" __global__ void prepend_row_positional_f32(const float* __restrict__ first, const float* __restrict__ rest,
                                                      const float* __restrict__ table, float scale,
                                                      const int* __restrict__ rest_offsets,
                                                      const int* __restrict__ out_offsets,
                                                      const int* __restrict__ out_sequences, int rows,
                                                      long long cols, float* __restrict__ out) {
    prepend_row_positional(first, rest, table, scale, rest_offsets, out_offsets, out_sequences, rows, cols, out);
}

extern "C" __global__ void prepend_row_positional_f16(const float* __restrict__ first, const float* __restrict__ rest,
                                                      const unsigned short* __restrict__ table, float scale,
                                                      const int* __restrict__ rest_offsets,
                                                      const int* __restrict__ out_offsets,
                                                      const int* __restrict__ out_sequences, int rows,
                                                      long long cols, float* __restrict__ out) {
    prepend_row_positional(first, rest, table, scale, rest_offsets, out_offsets, out_sequences, rows, cols, out);
}

extern "C" __global__ void drop_first_row(const float* __restrict__ x, const int* __restrict__ x_offsets,
                                          const int* __restrict__ out_offsets, const int* __restrict__ out_sequences,
                                          int rows, long long cols, float* __restrict__ out) {
    ROW_STRIDE(r, rows) {
        const int b = out_sequences[r];
        const float* xr = x + (x_offsets[b] + 1 + (r - out_offsets[b])) * cols;
        float* yr = out + r * cols;
        COL_STRIDE(c, cols) { yr[c] = xr[c]; }
    }
}
