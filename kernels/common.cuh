// common.cuh: helpers shared by the kernel files, included with
// `#include "common.cuh"`. NVRTC sees no files: the backend substitutes this
// text for that line before compiling (src/kernels.rs, `expand_common`), with
// #line directives so that messages name the right file and line.

// A 1-D grid-stride loop over n elements with 64-bit indices: correct for any
// grid size, so launchers may cap the grid.
#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// The sequence b with offsets[b] <= row < offsets[b + 1] of a packed batch of
// count sequences (offsets: int32 [count + 1] cumulative rows), by binary search.
// Empty sequences are skipped: the largest such b is returned.
__device__ __forceinline__ int sequence_of_row(const int* __restrict__ offsets, int count, long long row) {
    int lo = 0, hi = count;  // invariant: offsets[lo] <= row, answer in [lo, hi)
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (offsets[mid] <= row) lo = mid; else hi = mid;
    }
    return lo;
}
