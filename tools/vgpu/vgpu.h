// vgpu.h: what the virtual driver (driver.cpp), its cuBLASLt (cublaslt.cpp)
// and the host builds of kernels/*.cu (device.h) share. Not a CUDA header:
// only the handful of types and codes the virtual device needs, with the
// values of CUDA 13's cuda.h / cublasLt.h (the ABI cudarc's bindings use).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace vgpu {

// One parameter of a kernel as its host build declares it.
struct HostParam {
    size_t size, align;
    bool pointer;
};

// A kernel of the host build: `call` runs one thread of it with the
// parameters at `offsets` in `blob` (threadIdx etc. set by the scheduler).
struct HostKernel {
    const char* name;
    std::vector<HostParam> params;
    void (*call)(void* fn, const char* blob, const size_t* offsets);
    void* fn;
    // Whether its file uses __syncthreads or warp collectives: its threads
    // then run as fibers, else one after the other on one stack.
    bool cooperative;
};

void register_kernel(const HostKernel& k);

// Reports a fault of the running kernel (bad address, misaligned ldmatrix,
// ...) and abandons the launch: the error becomes the context's sticky error,
// as a device-side fault does on a GPU (CUDA driver API, "Error Handling":
// the context is unusable after a launch failure such as
// CUDA_ERROR_ILLEGAL_ADDRESS or CUDA_ERROR_MISALIGNED_ADDRESS).
[[noreturn]] void kernel_fault(int cuda_error, const std::string& why);

// Barriers of the running block (fiber scheduler in driver.cpp).
void sync_block();
void sync_warp();
unsigned warp_of_thread();
unsigned lane_of_thread();
// The block's dynamic shared memory (`extern __shared__`).
void* dynamic_shared();

// Work on a stream: the cuBLASLt emulation enqueues its GEMMs here so that
// they run in stream order with the kernels (and are recorded by a capture).
// Returns a CUresult.
int enqueue(void* stream, const char* what, std::function<int()> work);
// Whether [p, p + bytes) lies inside one live device allocation.
bool inside_allocation(uint64_t p, size_t bytes);

}  // namespace vgpu
