// CPU emulation of the CUDA bits flash_attention.cu and conv1d.cu use: 128 std::threads per block,
// warp collectives (ldmatrix, mma.sync, shfl) exchanged through per-warp buffers.
// Shared by tools/flash-attention-emu and tools/conv1d-emu.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
struct dim3e { unsigned x, y, z; };
thread_local dim3e threadIdx, blockIdx;
static dim3e blockDim, gridDim;  // per launch: set by the harness
// CUDA's vector types, with CUDA's alignment (a misaligned vector access faults on the device).
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
static inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
static inline float2 make_float2(float a, float b) { return {a, b}; }
static inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
template <class T> static inline T __ldg(const T* p) {
    if ((uintptr_t)p % alignof(T) != 0) {
        fprintf(stderr, "misaligned __ldg of %zu bytes at %p\n", sizeof(T), (const void*)p);
        abort();
    }
    return *p;
}
// The fast intrinsics are computed exactly here: their hardware error is not emulated.
static inline void emu_sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
#define __sincosf emu_sincosf
#define __sinf sinf
using std::min;
static std::barrier<>* block_bar;
static std::barrier<>* warp_bar[4];
static inline void __syncthreads() { block_bar->arrive_and_wait(); }
struct WarpBuf { unsigned long long addr[32]; unsigned a[32][4]; unsigned b[32][2]; float v[32]; };
static WarpBuf wb[4];
static inline int W() { return threadIdx.x / 32; }
static inline int L() { return threadIdx.x % 32; }
static inline void wsync() { warp_bar[W()]->arrive_and_wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int o) {
    wb[W()].v[L()] = v; wsync(); float r = wb[W()].v[L() ^ o]; wsync(); return r;
}
static inline unsigned long long smem_addr(const void* p) { return (unsigned long long)p; }
// cvt.rn.f16.f32: round to nearest even, as the _Float16 conversion does.
static inline uint16_t f32_to_f16_bits(float f) {
    _Float16 h = (_Float16)f; uint16_t bits; memcpy(&bits, &h, 2); return bits;
}
static inline float h2f(uint16_t bits) { _Float16 h; memcpy(&h, &bits, 2); return (float)h; }
// kernels/common.cuh's inline-PTX helpers (cvt.rn.f16.f32, cvt.f32.f16, cvt.rn.f16x2.f32; mma_16816 below).
static inline unsigned short f32_to_f16_rn(float f) { return f32_to_f16_bits(f); }
static inline float f16_to_f32(unsigned short h) { return h2f(h); }
static inline unsigned pack_half2(float lo, float hi) {
    return (unsigned)f32_to_f16_bits(lo) | ((unsigned)f32_to_f16_bits(hi) << 16);
}
static inline void ldmatrix_x4(unsigned (&r)[4], unsigned long long addr) {
    int w = W(), l = L(); wb[w].addr[l] = addr; wsync();
    for (int i = 0; i < 4; i++) memcpy(&r[i], (const char*)wb[w].addr[i * 8 + l / 4] + (l % 4) * 4, 4);
    wsync();
}
static inline void ldmatrix_x4_trans(unsigned (&r)[4], unsigned long long addr) {
    int w = W(), l = L(); wb[w].addr[l] = addr; wsync();
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        memcpy(&lo, (const char*)wb[w].addr[i * 8 + 2 * (l % 4)] + (l / 4) * 2, 2);
        memcpy(&hi, (const char*)wb[w].addr[i * 8 + 2 * (l % 4) + 1] + (l / 4) * 2, 2);
        r[i] = lo | ((unsigned)hi << 16);
    }
    wsync();
}
// PTX ISA m16n8k16 .f16 fragments: A reg j of lane (g, t): rows g (+8 for j odd), cols 2t, 2t+1 (+8 for j >= 2);
// B reg j: rows 2t, 2t+1 (+8 for j = 1), col g; C: c0, c1 row g cols 2t, 2t+1; c2, c3 row g+8.
static inline void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    int w = W(), l = L();
    for (int j = 0; j < 4; j++) wb[w].a[l][j] = a[j];
    wb[w].b[l][0] = b0; wb[w].b[l][1] = b1; wsync();
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; lane++) {
        int g = lane / 4, t = lane % 4;
        for (int j = 0; j < 4; j++) {
            int row = g + (j & 1) * 8, col = 2 * t + (j >> 1) * 8;
            A[row][col] = h2f(wb[w].a[lane][j] & 0xffff);
            A[row][col + 1] = h2f(wb[w].a[lane][j] >> 16);
        }
        for (int j = 0; j < 2; j++) {
            B[2 * t + j * 8][g] = h2f(wb[w].b[lane][j] & 0xffff);
            B[2 * t + j * 8 + 1][g] = h2f(wb[w].b[lane][j] >> 16);
        }
    }
    wsync();
    int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; i++) {
        int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
        float acc = d[i];
        for (int kk = 0; kk < 16; kk++) acc += A[row][kk] * B[kk][col];
        d[i] = acc;
    }
}
