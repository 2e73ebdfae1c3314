// driver.cpp: the virtual GPU's CUDA driver API, the subset lova-fast calls
// through cudarc (built as libcuda.so with the host build of kernels/*.cu).
//
// One virtual sm_90 device. Device memory is host memory (every allocation
// its own mapping between two inaccessible guard pages, 256-byte aligned);
// work is queued per stream and runs when the host waits for it (stream,
// event or context synchronisation, a copy to pageable memory), in stream
// order, on the calling thread under one lock. A kernel runs block by block;
// its threads are fibers (see device.h). Faults inside a kernel (an access
// outside any allocation, a misaligned vector or ldmatrix access, a barrier
// that not every thread reaches) end the launch and become the context's
// sticky error, as on a GPU. The rules of the hardware and of the driver are
// checked where the driver checks them, each citing the NVIDIA documentation:
// "CUDA Driver API" sections by name, the "CUDA C++ Programming Guide" (PG)
// and the "PTX ISA".
#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "device.h"

using CUresult = int;
using CUdeviceptr = unsigned long long;
using CUdevice = int;

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_MISALIGNED_ADDRESS = 716,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_UNMATCHED = 903,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
};

dim3v threadIdx, blockIdx, blockDim, gridDim;
WarpBuf vgpu_warp_buf[32];

namespace {

// The device: what an H100-class sm_90 part reports (PG, "Compute
// Capabilities", technical specifications for 9.0).
constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlock[3] = {1024, 1024, 64};
constexpr unsigned long long kMaxGrid[3] = {2147483647ull, 65535, 65535};
constexpr size_t kSharedPerBlock = 48 * 1024;          // without opt-in
constexpr size_t kSharedPerBlockOptin = 227 * 1024;    // cudaFuncAttributeMaxDynamicSharedMemorySize
constexpr size_t kTotalMemory = 80ull << 30;
constexpr int kDriverVersion = 13000;

std::recursive_mutex g_mu;
using Lock = std::lock_guard<std::recursive_mutex>;
int g_sticky = CUDA_SUCCESS;  // the context's sticky error after a kernel fault
bool g_initialized = false;

void note(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "vgpu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

// ---------------------------------------------------------------- memory

struct Allocation {
    size_t size;
    char* map;  // the whole mapping, guard pages included
    size_t map_len;
    bool device;  // else page-locked host memory (cuMemHostAlloc)
};
std::map<uint64_t, Allocation> g_allocs;  // by start address
size_t g_device_bytes = 0;
const size_t kPage = 4096;

// A mapping of [guard page][data][guard page], the data ending at the second
// guard page (rounded to 256 bytes: cuMemAlloc "memory is suitably aligned for
// any kind of variable", 256 bytes in practice), so that an access running off
// either end faults.
uint64_t map_allocation(size_t size, bool device) {
    size_t rounded = (std::max<size_t>(size, 1) + 255) / 256 * 256;
    size_t data_pages = (rounded + kPage - 1) / kPage * kPage;
    size_t len = data_pages + 2 * kPage;
    char* m = (char*)mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return 0;
    if (mprotect(m + kPage, data_pages, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, len);
        return 0;
    }
    char* start = m + kPage + data_pages - rounded;
    g_allocs[(uint64_t)start] = Allocation{size, m, len, device};
    if (device) g_device_bytes += size;
    return (uint64_t)start;
}

const Allocation* find_allocation(uint64_t p, uint64_t* start = nullptr) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    if (p > it->first + it->second.size) return nullptr;
    if (start) *start = it->first;
    return &it->second;
}

bool inside(uint64_t p, size_t bytes, bool device) {
    uint64_t start;
    const Allocation* a = find_allocation(p, &start);
    return a && a->device == device && p + bytes <= start + a->size;
}

// Freed memory is poisoned and made inaccessible, and its addresses are never
// handed out again, so a use after free faults.
CUresult free_allocation(uint64_t p, bool device) {
    auto it = g_allocs.find(p);
    if (it == g_allocs.end() || it->second.device != device) return CUDA_ERROR_INVALID_VALUE;
    Allocation a = it->second;
    memset((void*)p, 0xff, a.size);
    madvise(a.map, a.map_len, MADV_DONTNEED);
    mprotect(a.map, a.map_len, PROT_NONE);
    if (device) g_device_bytes -= a.size;
    g_allocs.erase(it);
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- streams, capture, graphs

struct Work {
    std::string what;
    std::function<int()> run;
};

struct Graph {
    std::vector<Work> nodes;
};

struct Stream {
    std::deque<Work> queue;
    // Stream capture (Driver API, "Stream Management": cuStreamBeginCapture).
    bool capturing = false;
    int capture_mode = 0;
    std::thread::id capture_thread;
    Graph* graph = nullptr;
    std::string invalidated;  // why the capture was invalidated, if it was
};
Stream g_null_stream;
Stream* stream_of(void* s) { return s ? (Stream*)s : &g_null_stream; }
std::vector<Stream*> g_streams{&g_null_stream};

// Runs one stream's queue. A failing item makes its error the context's
// sticky error (only kernel faults do on a device; a failing GEMM here means
// a bad pointer, which would be an illegal address there) and drops the rest.
CUresult flush(Stream* s) {
    while (!s->queue.empty()) {
        Work w = std::move(s->queue.front());
        s->queue.pop_front();
        if (g_sticky != CUDA_SUCCESS) continue;
        int r = w.run();
        if (r != CUDA_SUCCESS) {
            note("%s failed (error %d); the context is unusable from now on, as after a device fault", w.what.c_str(),
                 r);
            g_sticky = r;
        }
    }
    return g_sticky;
}
CUresult flush_all() {
    for (Stream* s : g_streams) flush(s);
    return g_sticky;
}

// "Potentially unsafe API calls" during a capture (Driver API, "Stream
// Management", cuStreamBeginCapture and CUstreamCaptureMode; PG, "CUDA Graphs:
// Prohibited and Unhandled Operations"): in GLOBAL mode any thread's, in
// THREAD_LOCAL mode the capturing thread's synchronous copies, allocations
// and synchronisations fail with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and
// invalidate the capture. (RELAXED mode allows them.)
CUresult unsafe_call(const char* what) {
    for (Stream* s : g_streams) {
        if (!s->capturing || s->capture_mode == 2 /* RELAXED */) continue;
        if (s->capture_mode == 1 /* THREAD_LOCAL */ && s->capture_thread != std::this_thread::get_id()) continue;
        if (s->invalidated.empty()) s->invalidated = std::string(what) + " during a stream capture";
        note("%s during a stream capture: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, the capture is invalidated", what);
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return CUDA_SUCCESS;
}

// Queues work on a stream, or records it into the stream's capture.
CUresult submit(Stream* s, std::string what, std::function<int()> run) {
    if (g_sticky != CUDA_SUCCESS) return g_sticky;
    if (s->capturing) {
        if (!s->invalidated.empty()) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        s->graph->nodes.push_back(Work{std::move(what), std::move(run)});
    } else {
        s->queue.push_back(Work{std::move(what), std::move(run)});
    }
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- kernels, modules

std::map<std::string, vgpu::HostKernel>& host_kernels() {
    static std::map<std::string, vgpu::HostKernel> k;
    return k;
}

struct Function {
    std::string name;
    const vgpu::HostKernel* host;
    std::vector<std::pair<size_t, size_t>> params;  // (offset, size) from the cubin
    size_t param_bytes;
    unsigned max_threads;     // __launch_bounds__ (.maxntid), else 1024
    size_t static_shared;     // .nv.shared.<name>
    size_t max_dynamic_shared;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
};
struct Module {
    std::map<std::string, std::unique_ptr<Function>> functions;
};

// What the driver reads from a cubin (an ELF file) for each kernel: the
// `.text.<name>` symbol, `.nv.shared.<name>` (static shared memory),
// `.nv.info.<name>` attributes EIATTR_KPARAM_INFO (0x17: ordinal, offset,
// size of each parameter), EIATTR_CBANK_PARAM_SIZE (0x19) and
// EIATTR_MAX_THREADS (0x05, from __launch_bounds__). The record layout is
// NVIDIA's undocumented ELF format as cuobjdump -elf prints it, checked
// against NVRTC 13 output (tools/vgpu/README.md).
bool parse_cubin(const unsigned char* b, std::map<std::string, std::unique_ptr<Function>>& out, std::string& err) {
    if (memcmp(b, "\x7f" "ELF", 4) != 0 || b[4] != 2) {
        err = "not a 64-bit ELF cubin (PTX text is not accepted by the virtual driver; NVRTC gives cubins)";
        return false;
    }
    uint64_t shoff;
    uint16_t shentsize, shnum, shstrndx;
    memcpy(&shoff, b + 0x28, 8);
    memcpy(&shentsize, b + 0x3a, 2);
    memcpy(&shnum, b + 0x3c, 2);
    memcpy(&shstrndx, b + 0x3e, 2);
    struct Sec { uint32_t name, type; uint64_t flags, addr, off, size; uint32_t link, info; uint64_t align, entsize; };
    std::vector<Sec> secs(shnum);
    for (int i = 0; i < shnum; i++) memcpy(&secs[i], b + shoff + (uint64_t)i * shentsize, sizeof(Sec));
    auto secname = [&](const Sec& s) { return std::string((const char*)b + secs[shstrndx].off + s.name); };
    std::map<std::string, size_t> shared;
    for (auto& s : secs) {
        std::string n = secname(s);
        if (n.rfind(".text.", 0) == 0) {
            auto f = std::make_unique<Function>();
            f->name = n.substr(6);
            f->host = nullptr;
            f->param_bytes = 0;
            f->max_threads = kMaxThreadsPerBlock;
            f->static_shared = 0;
            f->max_dynamic_shared = 0;
            out[f->name] = std::move(f);
        }
    }
    for (auto& s : secs) {
        std::string n = secname(s);
        if (n.rfind(".nv.shared.", 0) == 0 && out.count(n.substr(11))) out[n.substr(11)]->static_shared = s.size;
        if (n.rfind(".nv.info.", 0) != 0 || !out.count(n.substr(9))) continue;
        Function& f = *out[n.substr(9)];
        const unsigned char* d = b + s.off;
        size_t i = 0;
        while (i + 4 <= s.size) {
            unsigned fmt = d[i], attr = d[i + 1];
            if (fmt == 4) {  // EIFMT_SVAL: u16 size, then data
                uint16_t sz;
                memcpy(&sz, d + i + 2, 2);
                const unsigned char* v = d + i + 4;
                if (attr == 0x17 && sz >= 12) {
                    uint16_t ordinal, offset;
                    uint32_t flags;
                    memcpy(&ordinal, v + 4, 2);
                    memcpy(&offset, v + 6, 2);
                    memcpy(&flags, v + 8, 4);
                    if (f.params.size() <= ordinal) f.params.resize(ordinal + 1);
                    f.params[ordinal] = {offset, flags >> 18};
                } else if (attr == 0x05 && sz >= 12) {
                    uint32_t x, y, z;
                    memcpy(&x, v, 4);
                    memcpy(&y, v + 4, 4);
                    memcpy(&z, v + 8, 4);
                    f.max_threads = x * y * z;
                }
                i += 4 + sz;
            } else {
                if (fmt == 3 && attr == 0x19) {  // EIFMT_HVAL
                    uint16_t v;
                    memcpy(&v, d + i + 2, 2);
                    f.param_bytes = v;
                }
                i += 4;
            }
        }
    }
    if (out.empty()) {
        err = "the cubin defines no kernel";
        return false;
    }
    return true;
}

// ---------------------------------------------------------------- the fiber scheduler

enum FiberState { kNew, kReady, kWaiting, kDone };
struct Barrier {
    unsigned expected = 0, arrived = 0;
    uint64_t generation = 0;
    std::string what;
};
struct Fiber {
    FiberState state = kNew;
    ucontext_t uc;
    jmp_buf jb;
    char* stack = nullptr;
    Barrier* waiting_on = nullptr;
    uint64_t generation = 0;
    dim3v tid;
};

constexpr size_t kFiberStack = 256 * 1024;
std::vector<Fiber> g_fibers;
Fiber* g_current = nullptr;
jmp_buf g_sched_jb;
ucontext_t g_sched_uc;
Barrier g_block_barrier, g_warp_barrier[32];
bool g_cooperative = false;
unsigned g_threads_in_block = 0;
std::vector<unsigned char> g_dynamic_shared;

// The running launch: where a fault jumps back to.
thread_local sigjmp_buf* t_fault_jmp = nullptr;
thread_local int t_fault_code = 0;
thread_local std::string t_fault_why;

struct Launch {
    Function* f;
    unsigned grid[3], block[3];
    size_t dynamic_shared;
    std::vector<char> blob;     // parameters at host offsets
    std::vector<size_t> offsets;
};
const Launch* g_launch = nullptr;

void run_thread() {
    g_launch->f->host->call(g_launch->f->host->fn, g_launch->blob.data(), g_launch->offsets.data());
}

void fiber_main() {
    run_thread();
    g_current->state = kDone;
    _longjmp(g_sched_jb, 1);
}

void set_thread(unsigned t) {
    threadIdx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}

void yield_to_scheduler() {
    if (!_setjmp(g_current->jb)) _longjmp(g_sched_jb, 1);
}

void arrive(Barrier& b) {
    uint64_t gen = b.generation;
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        b.generation++;
        return;
    }
    g_current->state = kWaiting;
    g_current->waiting_on = &b;
    g_current->generation = gen;
    yield_to_scheduler();
}

// cp.async (device.h): per thread of the running block, its queued copies
// (destination, source, bytes, group) and its count of committed groups.
struct CpAsyncCopy { unsigned dst; const char* src; int bytes; int group; };
struct CpAsyncQueue { std::vector<CpAsyncCopy> copies; int committed = 0; };
static std::vector<CpAsyncQueue> g_cp_async;  // cleared at the start of every block

// One block: every thread in index order until it finishes or waits; then the
// waiting ones whose barrier has opened, again in index order.
void run_block() {
    unsigned n = g_threads_in_block;
    // Shared memory is uninitialised on a device: poison it (NaN bits in f32
    // and fp16) so that reading before writing shows in the results.
    if (g_launch->f->static_shared > 0) memset(__start_vgpu_smem, 0xff, __stop_vgpu_smem - __start_vgpu_smem);
    if (!g_dynamic_shared.empty()) memset(g_dynamic_shared.data(), 0xff, g_dynamic_shared.size());
    // Copies a block left queued never land in the next one.
    g_cp_async.clear();
    if (!g_cooperative) {
        for (unsigned t = 0; t < n; t++) {
            set_thread(t);
            run_thread();
        }
        return;
    }
    if (g_fibers.size() < n) g_fibers.resize(n);
    g_block_barrier = Barrier{n, 0, 0, "__syncthreads"};
    for (unsigned w = 0; w < (n + 31) / 32; w++) g_warp_barrier[w] = Barrier{std::min(32u, n - w * 32), 0, 0, "a warp collective"};
    for (unsigned t = 0; t < n; t++) {
        Fiber& f = g_fibers[t];
        if (!f.stack) {
            // Each stack has a guard page below it: an overflow faults.
            char* m = (char*)mmap(nullptr, kFiberStack + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) vgpu::kernel_fault(CUDA_ERROR_OUT_OF_MEMORY, "no memory for thread stacks");
            mprotect(m, kPage, PROT_NONE);
            f.stack = m + kPage;
        }
        f.state = kNew;
        set_thread(t);
        f.tid = threadIdx;
    }
    // Always the lowest-numbered thread that can run: a warp that passes a
    // barrier runs on before the threads after it have caught up, so a
    // missing __syncthreads shows as reads of shared memory not yet written
    // (poisoned), as it may on a GPU when that warp is scheduled first.
    unsigned done = 0;
    while (done < n) {
        unsigned t = 0;
        for (; t < n; t++) {
            Fiber& f = g_fibers[t];
            if (f.state == kDone || (f.state == kWaiting && f.waiting_on->generation == f.generation)) continue;
            break;
        }
        if (t == n) {
            // PG, "Synchronization Functions": __syncthreads is allowed in
            // conditional code only if the condition is the same across the
            // block; otherwise execution hangs or has unintended side effects.
            std::string where;
            for (unsigned u = 0; u < n; u++)
                if (g_fibers[u].state == kWaiting) {
                    where = g_fibers[u].waiting_on->what;
                    break;
                }
            vgpu::kernel_fault(CUDA_ERROR_LAUNCH_FAILED,
                               "threads wait at " + where + " that other threads of the block never reach (they exited or wait elsewhere)");
        }
        Fiber& f = g_fibers[t];
        g_current = &f;
        threadIdx = f.tid;
        if (!_setjmp(g_sched_jb)) {
            if (f.state == kNew) {
                f.state = kReady;
                getcontext(&f.uc);
                f.uc.uc_stack.ss_sp = f.stack;
                f.uc.uc_stack.ss_size = kFiberStack;
                f.uc.uc_link = nullptr;
                makecontext(&f.uc, fiber_main, 0);
                swapcontext(&g_sched_uc, &f.uc);
            } else {
                f.state = kReady;
                _longjmp(f.jb, 1);
            }
        }
        if (f.state == kDone) done++;
    }
}

void on_fault_signal(int sig, siginfo_t* info, void*);
struct sigaction g_old_segv, g_old_bus, g_old_ill;
void install_fault_handlers() {
    static bool installed = false;
    if (installed) return;
    installed = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    sigaction(SIGILL, &sa, &g_old_ill);
}

void on_fault_signal(int sig, siginfo_t* info, void*) {
    if (t_fault_jmp) {
        char buf[128];
        if (sig == SIGILL) {
            // The kernel files are built with -fsanitize=alignment trapping.
            t_fault_code = CUDA_ERROR_MISALIGNED_ADDRESS;
            snprintf(buf, sizeof buf, "misaligned memory access (alignment trap)");
        } else {
            t_fault_code = CUDA_ERROR_ILLEGAL_ADDRESS;
            snprintf(buf, sizeof buf, "access to %p, outside every live allocation", info->si_addr);
        }
        t_fault_why = buf;
        sigjmp_buf* j = t_fault_jmp;
        t_fault_jmp = nullptr;
        siglongjmp(*j, 1);
    }
    // Not ours: hand it to whoever handled it before (Rust's runtime).
    struct sigaction* old = sig == SIGSEGV ? &g_old_segv : sig == SIGBUS ? &g_old_bus : &g_old_ill;
    sigaction(sig, old, nullptr);
}

std::string launch_name(const Launch& l) {
    char b[256];
    snprintf(b, sizeof b, "kernel %s <<<(%u,%u,%u), (%u,%u,%u), %zu>>>", l.f->name.c_str(), l.grid[0], l.grid[1],
             l.grid[2], l.block[0], l.block[1], l.block[2], l.dynamic_shared);
    return b;
}

std::map<std::string, unsigned long long> g_launch_counts;  // kernels run, by name

int execute(const Launch& l) {
    g_launch_counts[l.f->name]++;
    // PG, "Device Memory": a kernel can only access device memory; a pointer
    // parameter that is not null must lie inside a live allocation when the
    // kernel runs (one past the end is allowed: an empty range).
    for (size_t i = 0; i < l.f->host->params.size(); i++) {
        if (!l.f->host->params[i].pointer) continue;
        uint64_t p;
        memcpy(&p, l.blob.data() + l.offsets[i], 8);
        if (p == 0) continue;
        if (!find_allocation(p) || !find_allocation(p)->device) {
            note("%s: pointer parameter %zu (0x%llx) is not inside a live device allocation: "
                 "CUDA_ERROR_ILLEGAL_ADDRESS", launch_name(l).c_str(), i, (unsigned long long)p);
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
    }
    install_fault_handlers();
    g_launch = &l;
    blockDim = {l.block[0], l.block[1], l.block[2]};
    gridDim = {l.grid[0], l.grid[1], l.grid[2]};
    g_threads_in_block = l.block[0] * l.block[1] * l.block[2];
    g_cooperative = l.f->host->cooperative;
    g_dynamic_shared.assign(l.dynamic_shared, 0xff);
    sigjmp_buf jb;
    if (sigsetjmp(jb, 1)) {
        t_fault_jmp = nullptr;
        note("%s, block (%u,%u,%u) thread (%u,%u,%u): %s", launch_name(l).c_str(), blockIdx.x, blockIdx.y, blockIdx.z,
             threadIdx.x, threadIdx.y, threadIdx.z, t_fault_why.c_str());
        g_launch = nullptr;
        return t_fault_code;
    }
    t_fault_jmp = &jb;
    for (unsigned z = 0; z < l.grid[2]; z++)
        for (unsigned y = 0; y < l.grid[1]; y++)
            for (unsigned x = 0; x < l.grid[0]; x++) {
                blockIdx = {x, y, z};
                run_block();
            }
    t_fault_jmp = nullptr;
    g_launch = nullptr;
    return CUDA_SUCCESS;
}

struct Event {
    bool recorded = false;
    bool done = false;
};
struct Exec {
    std::vector<Work> nodes;
};

int g_primary_ctx;  // the one context; its address is the handle
thread_local void* t_current_ctx = nullptr;

#define API extern "C" __attribute__((visibility("default"))) CUresult
#define CHECK_INIT() \
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED
}  // namespace

namespace vgpu {
void register_kernel(const HostKernel& k) { host_kernels()[k.name] = k; }

[[noreturn]] void kernel_fault(int code, const std::string& why) {
    t_fault_code = code;
    t_fault_why = why;
    sigjmp_buf* j = t_fault_jmp;
    t_fault_jmp = nullptr;
    if (!j) {
        note("fault outside a kernel: %s", why.c_str());
        abort();
    }
    siglongjmp(*j, 1);
}
void sync_block() {
    if (!g_cooperative) kernel_fault(CUDA_ERROR_LAUNCH_FAILED, "vgpu: __syncthreads in a kernel built as non-cooperative (gen.py)");
    arrive(g_block_barrier);
}
void sync_warp() {
    if (!g_cooperative) kernel_fault(CUDA_ERROR_LAUNCH_FAILED, "vgpu: a warp collective in a kernel built as non-cooperative (gen.py)");
    arrive(g_warp_barrier[warp_of_thread()]);
}
unsigned warp_of_thread() {
    return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) / 32;
}
unsigned lane_of_thread() {
    return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
}
void* dynamic_shared() { return g_dynamic_shared.data(); }
int enqueue(void* stream, const char* what, std::function<int()> work) {
    Lock lock(g_mu);
    return submit(stream_of(stream), what, std::move(work));
}
bool inside_allocation(uint64_t p, size_t bytes) {
    Lock lock(g_mu);
    return inside(p, bytes, true);
}
}  // namespace vgpu

// The shared window: static arrays at [0, S), dynamic shared memory from
// S rounded up to 1 KiB.
static size_t static_window() { return (size_t)(__stop_vgpu_smem - __start_vgpu_smem); }
static size_t dynamic_base() { return (static_window() + 1023) / 1024 * 1024; }

size_t __cvta_generic_to_shared(const void* p) {
    const char* c = (const char*)p;
    if (c >= __start_vgpu_smem && c < __stop_vgpu_smem) return (size_t)(c - __start_vgpu_smem);
    if (!g_dynamic_shared.empty() && c >= (const char*)g_dynamic_shared.data() &&
        c < (const char*)g_dynamic_shared.data() + g_dynamic_shared.size())
        return dynamic_base() + (size_t)(c - (const char*)g_dynamic_shared.data());
    vgpu::kernel_fault(CUDA_ERROR_ILLEGAL_ADDRESS, "cvta.to.shared of an address outside shared memory");
}

char* vgpu_shared_at(unsigned addr, size_t bytes) {
    if (addr + bytes <= static_window()) return __start_vgpu_smem + addr;
    if (addr >= dynamic_base() && addr - dynamic_base() + bytes <= g_dynamic_shared.size())
        return (char*)g_dynamic_shared.data() + (addr - dynamic_base());
    vgpu::kernel_fault(CUDA_ERROR_ILLEGAL_ADDRESS, "shared-memory access outside the block's shared memory");
}

static CpAsyncQueue& cp_async_queue() {
    unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    if (g_cp_async.size() <= t) g_cp_async.resize(t + 1);
    return g_cp_async[t];
}

void vgpu_ptx::cp_async_cg_shared_global(unsigned dst, const void* src, int src_size) {
    if (dst % 16 != 0 || (src_size > 0 && (uintptr_t)src % 16 != 0))
        vgpu::kernel_fault(CUDA_ERROR_MISALIGNED_ADDRESS, "cp.async.cg with an address not 16-byte aligned");
    if (src_size < 0 || src_size > 16)
        vgpu::kernel_fault(CUDA_ERROR_ILLEGAL_ADDRESS, "cp.async.cg src-size outside 0..16");
    vgpu_shared_at(dst, 16);  // faults outside the block's shared memory now, as the issue would
    CpAsyncQueue& q = cp_async_queue();
    q.copies.push_back({dst, (const char*)src, src_size, q.committed});
}

void vgpu_ptx::cp_async_commit_group() { cp_async_queue().committed++; }

void vgpu_ptx::cp_async_wait_group(int n) {
    CpAsyncQueue& q = cp_async_queue();
    std::vector<CpAsyncCopy> left;
    for (const CpAsyncCopy& c : q.copies) {
        if (c.group < q.committed - n) {
            char* d = vgpu_shared_at(c.dst, 16);
            if (c.bytes > 0) memcpy(d, c.src, c.bytes);
            memset(d + c.bytes, 0, 16 - c.bytes);
        } else {
            left.push_back(c);
        }
    }
    q.copies.swap(left);
}

void vgpu_ptx::vgpu_check_ldmatrix_row(unsigned addr) {
    if (addr % 16 != 0)
        vgpu::kernel_fault(CUDA_ERROR_MISALIGNED_ADDRESS, "ldmatrix row address not 16-byte aligned (PTX ISA, ldmatrix)");
    vgpu_shared_at(addr, 16);
}

// ================================================================ the API

// Not CUDA: how many times kernel `name` has run (tests check that a launch
// path was taken).
extern "C" __attribute__((visibility("default"))) unsigned long long vgpuLaunches(const char* name) {
    Lock lock(g_mu);
    auto it = g_launch_counts.find(name);
    return it == g_launch_counts.end() ? 0 : it->second;
}

API cuInit(unsigned flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    Lock lock(g_mu);
    g_initialized = true;
    return CUDA_SUCCESS;
}
API cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = kDriverVersion;
    return CUDA_SUCCESS;
}
API cuDeviceGetCount(int* n) {
    CHECK_INIT();
    *n = 1;
    return CUDA_SUCCESS;
}
API cuDeviceGet(CUdevice* d, int ordinal) {
    CHECK_INIT();
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
API cuDeviceGetName(char* name, int len, CUdevice d) {
    CHECK_INIT();
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, len, "lova-fast virtual GPU (CPU, LOVA_VGPU=1)");
    return CUDA_SUCCESS;
}
API cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    CHECK_INIT();
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = kTotalMemory;
    return CUDA_SUCCESS;
}
API cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    CHECK_INIT();
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    switch (attr) {
        case 1: *v = kMaxThreadsPerBlock; break;            // MAX_THREADS_PER_BLOCK
        case 2: case 3: case 4: *v = kMaxBlock[attr - 2]; break;
        case 5: case 6: case 7: *v = (int)kMaxGrid[attr - 5]; break;
        case 8: *v = (int)kSharedPerBlock; break;           // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;                            // WARP_SIZE
        case 16: *v = 132; break;                           // MULTIPROCESSOR_COUNT
        case 75: *v = 9; break;                             // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;                             // COMPUTE_CAPABILITY_MINOR
        case 97: *v = (int)kSharedPerBlockOptin; break;     // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: *v = 1; break;                            // MEMORY_POOLS_SUPPORTED
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
API cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    CHECK_INIT();
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *ctx = &g_primary_ctx;
    return CUDA_SUCCESS;
}
API cuDevicePrimaryCtxRelease_v2(CUdevice d) { return d == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE; }
API cuCtxSetCurrent(void* ctx) {
    if (ctx && ctx != &g_primary_ctx) return CUDA_ERROR_INVALID_CONTEXT;
    t_current_ctx = ctx;
    return CUDA_SUCCESS;
}
API cuCtxGetCurrent(void** ctx) {
    *ctx = t_current_ctx;
    return CUDA_SUCCESS;
}
API cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
API cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = t_current_ctx;
    return CUDA_SUCCESS;
}
API cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return CUDA_SUCCESS;
}
API cuCtxSynchronize() {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuCtxSynchronize")) return r;
    return flush_all();
}
API cuGetErrorString(CUresult e, const char** s);
API cuGetErrorName(CUresult e, const char** s) {
    static std::map<int, std::string> names = {
        {0, "CUDA_SUCCESS"}, {1, "CUDA_ERROR_INVALID_VALUE"}, {2, "CUDA_ERROR_OUT_OF_MEMORY"},
        {3, "CUDA_ERROR_NOT_INITIALIZED"}, {101, "CUDA_ERROR_INVALID_DEVICE"}, {200, "CUDA_ERROR_INVALID_IMAGE"},
        {201, "CUDA_ERROR_INVALID_CONTEXT"}, {400, "CUDA_ERROR_INVALID_HANDLE"}, {500, "CUDA_ERROR_NOT_FOUND"},
        {600, "CUDA_ERROR_NOT_READY"}, {700, "CUDA_ERROR_ILLEGAL_ADDRESS"},
        {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"}, {716, "CUDA_ERROR_MISALIGNED_ADDRESS"},
        {719, "CUDA_ERROR_LAUNCH_FAILED"}, {801, "CUDA_ERROR_NOT_SUPPORTED"},
        {900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"}, {901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"},
        {903, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"}, {908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD"}};
    auto it = names.find(e);
    if (it == names.end()) {
        *s = nullptr;
        return CUDA_ERROR_INVALID_VALUE;
    }
    *s = it->second.c_str();
    return CUDA_SUCCESS;
}
API cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

// ---- memory (Driver API, "Memory Management")

API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    Lock lock(g_mu);
    CHECK_INIT();
    if (CUresult r = unsafe_call("cuMemAlloc")) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;  // cuMemAlloc: "If bytesize is 0, returns CUDA_ERROR_INVALID_VALUE"
    if (g_device_bytes + bytes > kTotalMemory) return CUDA_ERROR_OUT_OF_MEMORY;
    *p = map_allocation(bytes, true);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
// Stream-ordered allocation (Driver API, "Stream Ordered Memory Allocator").
// The address is valid at once; inside a capture it would become a graph
// memory node, which the virtual driver does not emulate: refused.
API cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* stream) {
    Lock lock(g_mu);
    if (stream_of(stream)->capturing) {
        note("cuMemAllocAsync inside a stream capture (graph memory nodes) is not emulated");
        stream_of(stream)->invalidated = "cuMemAllocAsync during the capture";
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    if (g_device_bytes + bytes > kTotalMemory) return CUDA_ERROR_OUT_OF_MEMORY;
    *p = map_allocation(bytes, true);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
API cuMemFree_v2(CUdeviceptr p) {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuMemFree")) return r;
    flush_all();
    if (p == 0) return CUDA_SUCCESS;
    return free_allocation(p, true);
}
// Freed when the stream reaches this point: work queued before may still use it.
API cuMemFreeAsync(CUdeviceptr p, void* stream) {
    Lock lock(g_mu);
    Stream* s = stream_of(stream);
    if (s->capturing) {
        s->invalidated = "cuMemFreeAsync during the capture";
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (!g_allocs.count(p)) return CUDA_ERROR_INVALID_VALUE;
    return submit(s, "cuMemFreeAsync", [p] { return free_allocation(p, true); });
}
API cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuMemHostAlloc")) return r;
    *p = (void*)map_allocation(bytes, false);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
API cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
API cuMemFreeHost(void* p) {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuMemFreeHost")) return r;
    flush_all();
    return free_allocation((uint64_t)p, false);
}
API cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    Lock lock(g_mu);
    *total = kTotalMemory;
    *free_bytes = kTotalMemory - g_device_bytes;
    return CUDA_SUCCESS;
}

static bool check_device_range(CUdeviceptr p, size_t n, const char* what) {
    if (inside(p, n, true)) return true;
    note("%s: [0x%llx, +%zu) is not inside one live device allocation: CUDA_ERROR_INVALID_VALUE", what, p, n);
    return false;
}

// API synchronization behavior (Driver API, "API synchronization behavior"):
// a copy from pageable host memory returns once the source has been staged
// (so it is read now); from page-locked memory it is read when the stream
// gets there. Copies to pageable memory return once the copy is complete.
// Inside a capture only page-locked host memory can take part (PG, "CUDA
// Graphs": memcpy nodes cannot use pageable memory).
API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* stream) {
    Lock lock(g_mu);
    if (g_sticky) return g_sticky;
    if (!check_device_range(dst, n, "cuMemcpyHtoDAsync")) return CUDA_ERROR_INVALID_VALUE;
    Stream* s = stream_of(stream);
    if (inside((uint64_t)src, n, false))
        return submit(s, "cuMemcpyHtoDAsync", [=] { memcpy((void*)dst, src, n); return 0; });
    if (s->capturing) {
        note("cuMemcpyHtoDAsync from pageable host memory during a stream capture: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
        if (s->invalidated.empty()) s->invalidated = "a copy from pageable host memory during the capture";
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    auto staged = std::make_shared<std::vector<char>>((const char*)src, (const char*)src + n);
    return submit(s, "cuMemcpyHtoDAsync", [=] { memcpy((void*)dst, staged->data(), n); return 0; });
}
API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* stream) {
    Lock lock(g_mu);
    if (g_sticky) return g_sticky;
    if (!check_device_range(src, n, "cuMemcpyDtoHAsync")) return CUDA_ERROR_INVALID_VALUE;
    Stream* s = stream_of(stream);
    if (inside((uint64_t)dst, n, false))
        return submit(s, "cuMemcpyDtoHAsync", [=] { memcpy(dst, (const void*)src, n); return 0; });
    if (s->capturing) {
        note("cuMemcpyDtoHAsync to pageable host memory during a stream capture: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
        if (s->invalidated.empty()) s->invalidated = "a copy to pageable host memory during the capture";
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (CUresult r = flush(s)) return r;
    memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* stream) {
    Lock lock(g_mu);
    if (!check_device_range(dst, n, "cuMemcpyDtoDAsync") || !check_device_range(src, n, "cuMemcpyDtoDAsync"))
        return CUDA_ERROR_INVALID_VALUE;
    return submit(stream_of(stream), "cuMemcpyDtoDAsync", [=] { memmove((void*)dst, (const void*)src, n); return 0; });
}
API cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuMemcpyHtoD (synchronous)")) return r;
    if (!check_device_range(dst, n, "cuMemcpyHtoD")) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = flush_all()) return r;
    memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuMemcpyDtoH (synchronous)")) return r;
    if (!check_device_range(src, n, "cuMemcpyDtoH")) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = flush_all()) return r;
    memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
API cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* stream) {
    Lock lock(g_mu);
    if (!check_device_range(dst, n, "cuMemsetD8Async")) return CUDA_ERROR_INVALID_VALUE;
    return submit(stream_of(stream), "cuMemsetD8Async", [=] { memset((void*)dst, v, n); return 0; });
}
API cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuMemsetD8 (synchronous)")) return r;
    if (!check_device_range(dst, n, "cuMemsetD8")) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = flush_all()) return r;
    memset((void*)dst, v, n);
    return CUDA_SUCCESS;
}
API cuPointerGetAttribute(void*, int, CUdeviceptr) { return CUDA_ERROR_NOT_SUPPORTED; }

// ---- streams and events (Driver API, "Stream Management", "Event Management")

API cuStreamCreate(void** s, unsigned) {
    Lock lock(g_mu);
    Stream* st = new Stream();
    g_streams.push_back(st);
    *s = st;
    return CUDA_SUCCESS;
}
API cuStreamCreateWithPriority(void** s, unsigned flags, int) { return cuStreamCreate(s, flags); }
API cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = 0;
    return CUDA_SUCCESS;
}
API cuStreamDestroy_v2(void* s) {
    Lock lock(g_mu);
    Stream* st = stream_of(s);
    if (st->capturing) return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    // cuStreamDestroy: work already queued still completes.
    flush(st);
    for (auto it = g_streams.begin(); it != g_streams.end(); ++it)
        if (*it == st && st != &g_null_stream) {
            g_streams.erase(it);
            delete st;
            break;
        }
    return CUDA_SUCCESS;
}
API cuStreamSynchronize(void* s) {
    Lock lock(g_mu);
    Stream* st = stream_of(s);
    if (st->capturing) {
        // Synchronising a capturing stream is illegal (PG, "CUDA Graphs:
        // Prohibited and Unhandled Operations") and invalidates the capture.
        if (st->invalidated.empty()) st->invalidated = "cuStreamSynchronize on the capturing stream";
        note("cuStreamSynchronize on a capturing stream: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (CUresult r = unsafe_call("cuStreamSynchronize")) return r;
    return flush(st);
}
API cuStreamQuery(void* s) {
    Lock lock(g_mu);
    Stream* st = stream_of(s);
    if (st->capturing) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return st->queue.empty() ? g_sticky : CUDA_ERROR_NOT_READY;
}
API cuStreamWaitEvent(void* s, void* e, unsigned) {
    Lock lock(g_mu);
    // The waiting stream may not start later work before the event: running
    // everything queued so far satisfies that.
    if (!stream_of(s)->capturing) flush_all();
    (void)e;
    return g_sticky;
}
API cuEventCreate(void** e, unsigned) {
    *e = new Event();
    return CUDA_SUCCESS;
}
API cuEventDestroy_v2(void* e) {
    Lock lock(g_mu);
    flush_all();
    delete (Event*)e;
    return CUDA_SUCCESS;
}
API cuEventRecord(void* e, void* s) {
    Lock lock(g_mu);
    Event* ev = (Event*)e;
    Stream* st = stream_of(s);
    if (st->capturing) return CUDA_SUCCESS;  // an event node: ordering only, nothing to run
    ev->recorded = true;
    ev->done = false;
    return submit(st, "cuEventRecord", [ev] { ev->done = true; return 0; });
}
API cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
API cuEventSynchronize(void* e) {
    Lock lock(g_mu);
    if (CUresult r = unsafe_call("cuEventSynchronize")) return r;
    (void)e;
    return flush_all();
}
API cuEventQuery(void* e) {
    Lock lock(g_mu);
    Event* ev = (Event*)e;
    return !ev->recorded || ev->done ? g_sticky : CUDA_ERROR_NOT_READY;
}
API cuEventElapsedTime(float* ms, void*, void*) {
    *ms = 0;
    return CUDA_SUCCESS;
}
API cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// ---- capture and graphs (Driver API, "Stream Management", "Graph Management")

API cuStreamBeginCapture_v2(void* s, int mode) {
    Lock lock(g_mu);
    if (!s) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;  // the legacy NULL stream cannot be captured
    Stream* st = stream_of(s);
    if (st->capturing) return 401;  // CUDA_ERROR_ILLEGAL_STATE
    // Work queued before the capture is not part of it; it runs first.
    st->capturing = true;
    st->capture_mode = mode;
    st->capture_thread = std::this_thread::get_id();
    st->graph = new Graph();
    st->invalidated.clear();
    return CUDA_SUCCESS;
}
API cuStreamEndCapture(void* s, void** graph) {
    Lock lock(g_mu);
    Stream* st = stream_of(s);
    *graph = nullptr;
    if (!st->capturing) return 401;  // CUDA_ERROR_ILLEGAL_STATE
    // CU_STREAM_CAPTURE_MODE_THREAD_LOCAL/GLOBAL: "must be ended from the thread that began it".
    if (st->capture_mode != 2 && st->capture_thread != std::this_thread::get_id())
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    st->capturing = false;
    Graph* g = st->graph;
    st->graph = nullptr;
    if (!st->invalidated.empty()) {
        note("cuStreamEndCapture: the capture was invalidated (%s): CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
             st->invalidated.c_str());
        delete g;
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = g;
    return CUDA_SUCCESS;
}
API cuStreamIsCapturing(void* s, int* status) {
    Lock lock(g_mu);
    Stream* st = stream_of(s);
    *status = !st->capturing ? 0 : st->invalidated.empty() ? 1 : 2;
    return CUDA_SUCCESS;
}
API cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    Lock lock(g_mu);
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    Exec* e = new Exec();
    e->nodes = ((Graph*)graph)->nodes;
    *exec = e;
    return CUDA_SUCCESS;
}
// Replays the recorded work in order, with the parameters it was recorded with.
API cuGraphLaunch(void* exec, void* s) {
    Lock lock(g_mu);
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    Stream* st = stream_of(s);
    for (const Work& w : ((Exec*)exec)->nodes)
        if (CUresult r = submit(st, "graph node: " + w.what, w.run)) return r;
    return CUDA_SUCCESS;
}
API cuGraphUpload(void* exec, void*) { return exec ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
API cuGraphExecDestroy(void* exec) {
    Lock lock(g_mu);
    delete (Exec*)exec;
    return CUDA_SUCCESS;
}
API cuGraphDestroy(void* graph) {
    Lock lock(g_mu);
    delete (Graph*)graph;
    return CUDA_SUCCESS;
}

// ---- modules and launches (Driver API, "Module Management", "Execution Control")

API cuModuleLoadData(void** module, const void* image) {
    Lock lock(g_mu);
    CHECK_INIT();
    auto m = std::make_unique<Module>();
    std::string err;
    if (!parse_cubin((const unsigned char*)image, m->functions, err)) {
        note("cuModuleLoadData: %s", err.c_str());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    for (auto& [name, f] : m->functions) {
        auto it = host_kernels().find(name);
        if (it == host_kernels().end()) {
            note("cuModuleLoadData: kernel %s has no host build (rebuild the virtual GPU: tools/vgpu/build.sh)",
                 name.c_str());
            return CUDA_ERROR_INVALID_IMAGE;
        }
        f->host = &it->second;
        // The host build must be of the same source as the cubin: the same
        // parameters, each the same size.
        bool same = f->params.size() == f->host->params.size();
        for (size_t i = 0; same && i < f->params.size(); i++) same = f->params[i].second == f->host->params[i].size;
        if (!same) {
            note("cuModuleLoadData: the parameters of %s differ between the cubin and the host build "
                 "(rebuild the virtual GPU: tools/vgpu/build.sh)", name.c_str());
            return CUDA_ERROR_INVALID_IMAGE;
        }
        f->max_dynamic_shared = kSharedPerBlock - std::min(kSharedPerBlock, f->static_shared);
    }
    *module = m.release();
    return CUDA_SUCCESS;
}
API cuModuleUnload(void* module) {
    Lock lock(g_mu);
    flush_all();
    delete (Module*)module;
    return CUDA_SUCCESS;
}
API cuModuleGetFunction(void** f, void* module, const char* name) {
    Lock lock(g_mu);
    auto& fs = ((Module*)module)->functions;
    auto it = fs.find(name);
    if (it == fs.end()) return CUDA_ERROR_NOT_FOUND;
    *f = it->second.get();
    return CUDA_SUCCESS;
}
// cuFuncGetParamInfo (CUDA 12.4+): offset and size of parameter `index`, from the cubin.
API cuFuncGetParamInfo(void* fn, size_t index, size_t* offset, size_t* size) {
    Function* f = (Function*)fn;
    if (!f || index >= f->params.size()) return CUDA_ERROR_INVALID_VALUE;
    if (offset) *offset = f->params[index].first;
    if (size) *size = f->params[index].second;
    return CUDA_SUCCESS;
}
API cuFuncGetAttribute(int* v, int attr, void* fn) {
    Function* f = (Function*)fn;
    switch (attr) {
        case 0: *v = (int)f->max_threads; return CUDA_SUCCESS;          // MAX_THREADS_PER_BLOCK
        case 1: *v = (int)f->static_shared; return CUDA_SUCCESS;        // SHARED_SIZE_BYTES
        case 8: *v = (int)f->max_dynamic_shared; return CUDA_SUCCESS;   // MAX_DYNAMIC_SHARED_SIZE_BYTES
        default: *v = 0; return CUDA_SUCCESS;
    }
}
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (8) is the opt-in for more
// than 48 KB of shared memory (PG, "Shared Memory" in the compute capability
// 9.0 section); it may not exceed the opt-in maximum less static shared memory.
API cuFuncSetAttribute(void* fn, int attr, int value) {
    Function* f = (Function*)fn;
    if (attr == 8) {
        if (value < 0 || (size_t)value + f->static_shared > kSharedPerBlockOptin) return CUDA_ERROR_INVALID_VALUE;
        f->max_dynamic_shared = value;
    }
    return CUDA_SUCCESS;
}
API cuFuncSetCacheConfig(void*, int) { return CUDA_SUCCESS; }

API cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* stream, void** params, void** extra) {
    Lock lock(g_mu);
    if (g_sticky) return g_sticky;
    Function* f = (Function*)fn;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    std::string name = f->name;
    // Execution configuration limits (PG, "Compute Capabilities", technical
    // specifications: block at most 1024 x 1024 x 64 and 1024 threads, grid
    // at most (2^31 - 1) x 65535 x 65535; cuLaunchKernel returns
    // CUDA_ERROR_INVALID_VALUE for a configuration outside them).
    for (int i = 0; i < 3; i++) {
        if (grid[i] == 0 || block[i] == 0 || grid[i] > kMaxGrid[i] || block[i] > kMaxBlock[i]) {
            note("launching %s: grid (%u,%u,%u) / block (%u,%u,%u) outside the device limits", name.c_str(), gx, gy, gz,
                 bx, by, bz);
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    unsigned threads = bx * by * bz;
    if (threads > (unsigned)kMaxThreadsPerBlock) {
        note("launching %s: %u threads per block (at most 1024)", name.c_str(), threads);
        return CUDA_ERROR_INVALID_VALUE;
    }
    // __launch_bounds__(N): a launch with more than N threads per block fails
    // (PG, "Launch Bounds": "the kernel will fail to launch").
    if (threads > f->max_threads) {
        note("launching %s: %u threads per block exceed its __launch_bounds__ (%u): "
             "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", name.c_str(), threads, f->max_threads);
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    // Dynamic shared memory beyond the function's limit (48 KB less static
    // shared memory unless opted in with cuFuncSetAttribute).
    if (shared > f->max_dynamic_shared) {
        note("launching %s: %u bytes of dynamic shared memory, the limit is %zu (static %zu; more than 48 KB needs "
             "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)", name.c_str(), shared, f->max_dynamic_shared,
             f->static_shared);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (extra != nullptr || (params == nullptr && !f->params.empty())) {
        note("launching %s: only kernelParams is supported", name.c_str());
        return CUDA_ERROR_INVALID_VALUE;
    }
    // The driver copies each parameter by the size the cubin declares.
    auto l = std::make_shared<Launch>();
    l->f = f;
    memcpy(l->grid, grid, sizeof grid);
    memcpy(l->block, block, sizeof block);
    l->dynamic_shared = shared;
    size_t off = 0;
    for (auto& p : f->host->params) {
        off = (off + p.align - 1) / p.align * p.align;
        l->offsets.push_back(off);
        off += p.size;
    }
    l->blob.assign(off + 8, 0);
    for (size_t i = 0; i < f->params.size(); i++) memcpy(l->blob.data() + l->offsets[i], params[i], f->params[i].second);
    return submit(stream_of(stream), launch_name(*l), [l] { return execute(*l); });
}
