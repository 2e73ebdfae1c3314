// convert.cu: f32 -> fp16 conversion of GEMM inputs.
//
// Computes: out[i] = fp16(x[i]), round to nearest even (values beyond the fp16
// range become +-inf, as under PyTorch autocast, whose fp16 matmuls the
// reference runs). The arena holds activations in f32; cuBLASLt's fp16 GEMM
// wants fp16 operands, so a Linear whose input is f32 converts it into a
// scratch buffer first. (A Linear whose input is an fp16 block activation,
// written so by its producer, needs no conversion: src/backend/cuda/linear.rs.)
//
// Layout: x and out are contiguous, n elements; out holds fp16 bit patterns
// (unsigned short), one element per thread and iteration.
// Launch: 1-D grid-stride, 256 threads per block, any grid size.
//
// The conversion is common.cuh's f32_to_f16_rn (PTX cvt.rn.f16.f32).

#include "common.cuh"

extern "C" __global__ void f32_to_f16(const float* __restrict__ x, unsigned short* __restrict__ out, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = f32_to_f16_rn(x[i]);
    }
}

// Adds a bias row to every row of out ([rows, cols]); used only when cuBLASLt
// offers no algorithm with the fused bias epilogue for a shape.
extern "C" __global__ void add_bias_rows(float* __restrict__ out, const float* __restrict__ bias, long long rows,
                                         long long cols) {
    long long n = rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] += bias[i % cols];
    }
}

// add_bias_rows for an fp16 out (a GEMM writing fp16 activations): the sum in
// f32, rounded once.
extern "C" __global__ void add_bias_rows_f16(unsigned short* __restrict__ out, const float* __restrict__ bias,
                                             long long rows, long long cols) {
    long long n = rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = f32_to_f16_rn(f16_to_f32(out[i]) + bias[i % cols]);
    }
}
