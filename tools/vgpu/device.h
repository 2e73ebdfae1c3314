// device.h: CUDA C++ as the host build of kernels/*.cu sees it (gen.py puts
// `#include "device.h"` on top of each transformed file). Grown from the
// prelude of an earlier g++ emulator of the flash kernel (tools/flash-attention-emu,
// retired; see the git history), with threads as fibers (driver.cpp):
// one block runs at a time, its threads in index order, each until it
// finishes or waits at a barrier, so a missing __syncthreads makes a thread
// read shared memory its neighbours have not written yet (poisoned with NaN
// bits at the start of every block).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>

#include "vgpu.h"

struct dim3v { unsigned x, y, z; };
extern dim3v threadIdx, blockIdx, blockDim, gridDim;

// CUDA's vector types with CUDA's alignment (CUDA C++ Programming Guide,
// "Built-in Vector Types": float4/uint4 16 bytes, float2/uint2 8). The kernel
// files are built with -fsanitize=alignment trapping, so a misaligned vector
// access faults here as it does on the device.
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
static inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
static inline float2 make_float2(float a, float b) { return {a, b}; }
static inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// ld.global.nc (PTX ISA, "Data Movement and Conversion Instructions: ld.global.nc"):
// the address must be aligned to the access size.
template <class T> static inline T __ldg(const T* p) {
    if ((uintptr_t)p % alignof(T) != 0)
        vgpu::kernel_fault(716, "misaligned __ldg of " + std::to_string(sizeof(T)) + " bytes");
    return *p;
}
// The fast intrinsics are computed exactly here: their hardware error is not emulated.
static inline void emu_sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
#define __sincosf emu_sincosf
#define __sinf sinf
#define __cosf cosf
#define __expf expf
using std::max;
using std::min;

static inline void __syncthreads() { vgpu::sync_block(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { vgpu::sync_warp(); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }

// Warp collectives exchange values through one buffer per warp, with a warp
// barrier on each side (all 32 lanes must take part: the kernels use full masks).
struct WarpBuf { uint64_t addr[32]; unsigned a[32][4]; unsigned b[32][2]; float c[32][4]; float v[32]; };
extern WarpBuf vgpu_warp_buf[32];
static inline WarpBuf& WB() { return vgpu_warp_buf[vgpu::warp_of_thread()]; }
static inline int L() { return (int)vgpu::lane_of_thread(); }
static inline float __shfl_xor_sync(unsigned, float v, int o) {
    WarpBuf& w = WB();
    w.v[L()] = v; vgpu::sync_warp(); float r = w.v[L() ^ o]; vgpu::sync_warp(); return r;
}

// Shared memory: gen.py puts every __shared__ array into this section. The
// shared state space is a 32-bit window (PTX ISA, "State Spaces: Shared"):
// static arrays at offset 0.., the launch's dynamic shared memory after them.
#define VGPU_SHARED __attribute__((section("vgpu_smem")))
extern "C" char __start_vgpu_smem[], __stop_vgpu_smem[];
// cvta.to.shared (PTX ISA, "cvta"): a generic address in shared memory -> its
// offset in the shared window; outside shared memory the result is undefined
// (a fault here).
size_t __cvta_generic_to_shared(const void* p);
// The generic address of shared-window offset `addr`, for an access of `bytes`
// (faults outside the window).
char* vgpu_shared_at(unsigned addr, size_t bytes);

// fp16 <-> f32 with round to nearest even, as the _Float16 conversion does.
static inline uint16_t vgpu_f16_bits(float f) { _Float16 h = (_Float16)f; uint16_t b; memcpy(&b, &h, 2); return b; }
static inline float vgpu_h2f(uint16_t bits) { _Float16 h; memcpy(&h, &bits, 2); return (float)h; }

// The PTX instructions the kernels write as inline assembly. gen.py turns
// each `asm("instr operands" : outputs : inputs)` into a call of
// vgpu_ptx::<instr with '.' as '_'>(operands in order, outputs by reference);
// an instruction missing here is a compile error naming it.
namespace vgpu_ptx {
// cvt (PTX ISA, "Data Movement and Conversion Instructions: cvt"): .rn is
// round to nearest even; cvt.rn.f16x2.f32 d, a, b puts a in the upper half
// of d and b in the lower.
static inline void cvt_rn_f16_f32(unsigned short& d, float a) { d = vgpu_f16_bits(a); }
static inline void cvt_f32_f16(float& d, unsigned short a) { d = vgpu_h2f(a); }
static inline void cvt_rn_f16x2_f32(unsigned& d, float a, float b) {
    d = ((unsigned)vgpu_f16_bits(a) << 16) | (unsigned)vgpu_f16_bits(b);
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA, "Warp-level
// matrix load instruction: ldmatrix"): lane l gives the row address of row
// l % 8 of matrix l / 8 (each row 16 bytes in shared memory, 16-byte
// aligned); lane t receives of matrix i row t / 4, columns 2 (t % 4), +1
// (with .trans: rows 2 (t % 4), +1 of column t / 4).
void vgpu_check_ldmatrix_row(unsigned addr);
static inline void ldmatrix_x4(bool trans, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, unsigned addr) {
    vgpu_check_ldmatrix_row(addr);
    WarpBuf& w = WB(); int l = L(); w.addr[l] = addr; vgpu::sync_warp();
    unsigned* r[4] = {&r0, &r1, &r2, &r3};
    for (int i = 0; i < 4; i++) {
        if (!trans) {
            memcpy(r[i], vgpu_shared_at((unsigned)w.addr[i * 8 + l / 4], 16) + (l % 4) * 4, 4);
        } else {
            uint16_t lo, hi;
            memcpy(&lo, vgpu_shared_at((unsigned)w.addr[i * 8 + 2 * (l % 4)], 16) + (l / 4) * 2, 2);
            memcpy(&hi, vgpu_shared_at((unsigned)w.addr[i * 8 + 2 * (l % 4) + 1], 16) + (l / 4) * 2, 2);
            *r[i] = lo | ((unsigned)hi << 16);
        }
    }
    vgpu::sync_warp();
}
static inline void ldmatrix_sync_aligned_m8n8_x4_shared_b16(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3,
                                                            unsigned addr) {
    ldmatrix_x4(false, r0, r1, r2, r3, addr);
}
static inline void ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(unsigned& r0, unsigned& r1, unsigned& r2,
                                                                  unsigned& r3, unsigned addr) {
    ldmatrix_x4(true, r0, r1, r2, r3, addr);
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 d, a, b, c (PTX ISA,
// "Matrix Fragments for mma.m16n8k16 with floating point type"): lane
// (g = lane / 4, t = lane % 4) holds A reg j: rows g (+8 for j odd), cols 2t,
// 2t+1 (+8 for j >= 2); B reg j: rows 2t, 2t+1 (+8 for j = 1), col g; C/D:
// c0, c1 row g cols 2t, 2t+1; c2, c3 row g+8. f32 accumulation.
static inline void mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(float& d0, float& d1, float& d2, float& d3,
                                                                     unsigned a0, unsigned a1, unsigned a2,
                                                                     unsigned a3, unsigned b0, unsigned b1, float c0,
                                                                     float c1, float c2, float c3) {
    // Every lane puts its fragments in; lane 0 (first to resume after the
    // barrier) computes the warp's whole D; every lane takes its part.
    WarpBuf& w = WB(); int l = L();
    w.a[l][0] = a0; w.a[l][1] = a1; w.a[l][2] = a2; w.a[l][3] = a3;
    w.b[l][0] = b0; w.b[l][1] = b1;
    w.c[l][0] = c0; w.c[l][1] = c1; w.c[l][2] = c2; w.c[l][3] = c3;
    vgpu::sync_warp();
    if (l == 0) {
        float A[16][16], B[16][8], C[16][8];
        for (int lane = 0; lane < 32; lane++) {
            int g = lane / 4, t = lane % 4;
            for (int j = 0; j < 4; j++) {
                int row = g + (j & 1) * 8, col = 2 * t + (j >> 1) * 8;
                A[row][col] = vgpu_h2f(w.a[lane][j] & 0xffff);
                A[row][col + 1] = vgpu_h2f(w.a[lane][j] >> 16);
            }
            for (int j = 0; j < 2; j++) {
                B[2 * t + j * 8][g] = vgpu_h2f(w.b[lane][j] & 0xffff);
                B[2 * t + j * 8 + 1][g] = vgpu_h2f(w.b[lane][j] >> 16);
            }
            for (int i = 0; i < 4; i++) C[g + (i >> 1) * 8][2 * t + (i & 1)] = w.c[lane][i];
        }
        for (int lane = 0; lane < 32; lane++) {
            int g = lane / 4, t = lane % 4;
            for (int i = 0; i < 4; i++) {
                int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
                float acc = C[row][col];
                for (int kk = 0; kk < 16; kk++) acc += A[row][kk] * B[kk][col];
                w.c[lane][i] = acc;
            }
        }
    }
    vgpu::sync_warp();
    d0 = w.c[l][0]; d1 = w.c[l][1]; d2 = w.c[l][2]; d3 = w.c[l][3];
}

// cp.async.cg.shared.global [dst], [src], 16, src_size; cp.async.commit_group;
// cp.async.wait_group N (PTX ISA, "Data Movement and Conversion Instructions:
// cp.async"): each thread's copies are queued, in groups closed by
// commit_group, and land only when a wait_group covers them (every committed
// group but the newest N); bytes past src_size are zero-filled. So a read of
// the destination before the wait sees the block's poison or an old tile, as
// it may on the device. Both addresses must be 16-byte aligned.
void cp_async_cg_shared_global(unsigned dst, const void* src, int src_size);
void cp_async_commit_group();
void cp_async_wait_group(int n);
}  // namespace vgpu_ptx

// Registration of the file's kernels (gen.py appends one VGPU_KERNEL per kernel).
namespace vgpu {
template <class T> static inline T load_param(const char* p) { T v; memcpy(&v, p, sizeof(T)); return v; }
template <class... A> struct Signature {
    template <size_t... I>
    static void call_impl(void (*f)(A...), const char* blob, const size_t* off, std::index_sequence<I...>) {
        f(load_param<A>(blob + off[I])...);
    }
    static void call(void* f, const char* blob, const size_t* off) {
        call_impl(reinterpret_cast<void (*)(A...)>(f), blob, off, std::index_sequence_for<A...>{});
    }
    static std::vector<HostParam> params() { return {HostParam{sizeof(A), alignof(A), std::is_pointer_v<A>}...}; }
};
template <class... A> static inline HostKernel host_kernel(const char* name, void (*f)(A...), bool cooperative) {
    return HostKernel{name, Signature<A...>::params(), &Signature<A...>::call, reinterpret_cast<void*>(f), cooperative};
}
}  // namespace vgpu
#define VGPU_KERNEL(name, cooperative)                                                        \
    static const bool vgpu_registered_##name = [] {                                           \
        vgpu::register_kernel(vgpu::host_kernel(#name, &name, cooperative));                  \
        return true;                                                                          \
    }();
