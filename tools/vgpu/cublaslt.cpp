// cublaslt.cpp: the virtual GPU's cuBLASLt (built as libcublasLt.so), the
// subset lova-fast calls through cudarc: handles, matmul descriptors, matrix
// layouts, preferences, the algorithm heuristic and cublasLtMatmul as a
// reference column-major GEMM (f64 sums) run in stream order on the virtual
// device. Sections cited are those of NVIDIA's cuBLAS documentation, part
// "Using the cuBLASLt API".
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "vgpu.h"

using Status = int;
enum : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum : int { CUDA_R_32F = 0, CUDA_R_16F = 2 };
enum : int { CUBLAS_COMPUTE_32F = 68 };
enum : int { CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_BIAS = 4 };
enum : int { CUBLASLT_ORDER_COL = 0 };

#define API extern "C" __attribute__((visibility("default"))) Status

namespace {

void note(const std::string& s) { fprintf(stderr, "vgpu cuBLASLt: %s\n", s.c_str()); }

// cublasLtMatrixLayoutAttribute_t (section "cublasLtMatrixLayoutAttribute_t").
struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
    int order = CUBLASLT_ORDER_COL;
    int batch = 1;
    int64_t batch_stride = 0;
};
// cublasLtMatmulDescAttributes_t (section "cublasLtMatmulDescAttributes_t").
struct Desc {
    int compute, scale;
    int pointer_mode = 0;  // host
    int transa = 0, transb = 0;
    int epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    uint64_t bias = 0;
    int bias_type = -1;  // default (-1): D's type
    int64_t bias_batch_stride = 0;
};
struct Pref {
    uint64_t workspace = 0;
    uint32_t align[4] = {256, 256, 256, 256};  // MIN_ALIGNMENT_{A,B,C,D}_BYTES, default 256
};
struct Handle {
    int magic = 0x4c54;
};
// The opaque 64-byte cublasLtMatmulAlgo_t: what the heuristic chose.
struct Algo {
    uint32_t magic;
    uint32_t align[4];
    uint32_t variant;  // which of the heuristic's offers (all emulated alike)
};
constexpr uint32_t kAlgoMagic = 0x76677075;

size_t elem(int type) { return type == CUDA_R_16F ? 2 : 4; }
float load(int type, const char* base, uint64_t i) {
    if (type == CUDA_R_16F) {
        _Float16 h;
        memcpy(&h, base + 2 * i, 2);
        return (float)h;
    }
    float f;
    memcpy(&f, base + 4 * i, 4);
    return f;
}
void store(int type, char* base, uint64_t i, double v) {
    if (type == CUDA_R_16F) {
        _Float16 h = (_Float16)(float)v;
        memcpy(base + 2 * i, &h, 2);
    } else {
        float f = (float)v;
        memcpy(base + 4 * i, &f, 4);
    }
}

// The shape and type rules of cublasLtMatmul (section "cublasLtMatmul"):
// op(A) is m x k, op(B) is k x n, C and D are m x n; ld >= rows for the
// column order; the same batch count everywhere; data types from the table
// of supported combinations (only those lova-fast needs are listed: compute
// 32F with scale 32F, A/B 16F with C/D 16F or 32F, or all 32F); the bias
// epilogue needs a bias of D's rows, f32 here.
Status validate(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dd, std::string& why) {
    uint64_t m = d.transa ? a.cols : a.rows, ka = d.transa ? a.rows : a.cols;
    uint64_t kb = d.transb ? b.cols : b.rows, n = d.transb ? b.rows : b.cols;
    for (const Layout* l : {&a, &b, &c, &dd}) {
        if (l->order != CUBLASLT_ORDER_COL) {
            why = "only CUBLASLT_ORDER_COL layouts are emulated";
            return CUBLAS_STATUS_NOT_SUPPORTED;
        }
        if (l->ld < (int64_t)std::max<uint64_t>(l->rows, 1)) {
            why = "a leading dimension smaller than the rows";
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    if (ka != kb || m != dd.rows || n != dd.cols || c.rows != dd.rows || c.cols != dd.cols) {
        why = "op(A) " + std::to_string(m) + "x" + std::to_string(ka) + ", op(B) " + std::to_string(kb) + "x" +
              std::to_string(n) + ", D " + std::to_string(dd.rows) + "x" + std::to_string(dd.cols) + ": shapes do not match";
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (a.batch != dd.batch || b.batch != dd.batch || c.batch != dd.batch) {
        why = "batch counts differ";
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F || d.pointer_mode != 0) {
        why = "only CUBLAS_COMPUTE_32F with CUDA_R_32F host scalars is emulated";
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    bool ab16 = a.type == CUDA_R_16F && b.type == CUDA_R_16F, ab32 = a.type == CUDA_R_32F && b.type == CUDA_R_32F;
    bool cd_ok = c.type == dd.type && (dd.type == CUDA_R_32F || (dd.type == CUDA_R_16F && ab16));
    if (!(ab16 || ab32) || !cd_ok) {
        why = "unsupported type combination A " + std::to_string(a.type) + ", B " + std::to_string(b.type) + ", C " +
              std::to_string(c.type) + ", D " + std::to_string(dd.type);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (d.epilogue != CUBLASLT_EPILOGUE_DEFAULT && d.epilogue != CUBLASLT_EPILOGUE_BIAS) {
        why = "epilogue " + std::to_string(d.epilogue) + " is not emulated";
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: -1 means D's type, so an fp16 D with
    // the default reads an fp16 bias; only f32 biases are emulated, so that
    // case is refused rather than read as f32.
    int bias_type = d.bias_type == -1 ? dd.type : d.bias_type;
    if (d.epilogue == CUBLASLT_EPILOGUE_BIAS && bias_type != CUDA_R_32F) {
        why = "only an f32 bias is emulated (an fp16 D needs CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = CUDA_R_32F)";
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

uint64_t span(const Layout& l) {
    return ((l.cols ? l.cols - 1 : 0) * (uint64_t)l.ld + l.rows + (uint64_t)(l.batch - 1) * l.batch_stride) * elem(l.type);
}

}  // namespace

API cublasLtCreate(void** h) {
    *h = new Handle();
    return CUBLAS_STATUS_SUCCESS;
}
API cublasLtDestroy(void* h) {
    delete (Handle*)h;
    return CUBLAS_STATUS_SUCCESS;
}
extern "C" __attribute__((visibility("default"))) size_t cublasLtGetVersion() { return 130000; }
extern "C" __attribute__((visibility("default"))) const char* cublasLtGetStatusString(Status s) {
    return s == 0 ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_ERROR";
}

API cublasLtMatrixLayoutCreate(void** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    *l = new Layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
API cublasLtMatrixLayoutDestroy(void* l) {
    delete (Layout*)l;
    return CUBLAS_STATUS_SUCCESS;
}
API cublasLtMatrixLayoutSetAttribute(void* lp, int attr, const void* buf, size_t size) {
    Layout& l = *(Layout*)lp;
    // Attribute sizes as in section "cublasLtMatrixLayoutAttribute_t".
    auto get = [&](auto& field) {
        if (size != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&field, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attr) {
        case 0: { uint32_t t; Status s = get(t); l.type = (int)t; return s; }
        case 1: { int32_t o; Status s = get(o); l.order = o; return s; }
        case 2: return get(l.rows);
        case 3: return get(l.cols);
        case 4: return get(l.ld);
        case 5: { int32_t b; Status s = get(b); l.batch = b; return s; }
        case 6: return get(l.batch_stride);
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

API cublasLtMatmulDescCreate(void** d, int compute, int scale) {
    *d = new Desc{compute, scale};
    return CUBLAS_STATUS_SUCCESS;
}
API cublasLtMatmulDescDestroy(void* d) {
    delete (Desc*)d;
    return CUBLAS_STATUS_SUCCESS;
}
API cublasLtMatmulDescSetAttribute(void* dp, int attr, const void* buf, size_t size) {
    Desc& d = *(Desc*)dp;
    auto get32 = [&](int& field) {
        if (size != 4) return CUBLAS_STATUS_INVALID_VALUE;
        int32_t v;
        memcpy(&v, buf, 4);
        field = v;
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attr) {
        case 0: return get32(d.compute);
        case 1: return get32(d.scale);
        case 2: return get32(d.pointer_mode);
        case 3: return get32(d.transa);
        case 4: return get32(d.transb);
        case 7: return get32(d.epilogue);
        case 8:
            if (size != 8) return CUBLAS_STATUS_INVALID_VALUE;
            memcpy(&d.bias, buf, 8);
            return CUBLAS_STATUS_SUCCESS;
        case 10:
            if (size != 8) return CUBLAS_STATUS_INVALID_VALUE;
            memcpy(&d.bias_batch_stride, buf, 8);
            return CUBLAS_STATUS_SUCCESS;
        case 26: return get32(d.bias_type);
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

API cublasLtMatmulPreferenceCreate(void** p) {
    *p = new Pref();
    return CUBLAS_STATUS_SUCCESS;
}
API cublasLtMatmulPreferenceDestroy(void* p) {
    delete (Pref*)p;
    return CUBLAS_STATUS_SUCCESS;
}
API cublasLtMatmulPreferenceSetAttribute(void* pp, int attr, const void* buf, size_t size) {
    Pref& p = *(Pref*)pp;
    if (attr == 1) {
        if (size != 8) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p.workspace, buf, 8);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (attr >= 5 && attr <= 8) {
        if (size != 4) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p.align[attr - 5], buf, 4);
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_SUCCESS;  // search mode, masks: no effect on the one algorithm
}

// Set by vgpuWithholdBiasEpilogue (tests), or LOVA_VGPU_NO_BIAS_EPILOGUE=1.
std::atomic<int> g_withhold_bias{-1};
extern "C" __attribute__((visibility("default"))) void vgpuWithholdBiasEpilogue(int on) { g_withhold_bias = on; }
static bool withhold_bias() {
    int w = g_withhold_bias.load();
    if (w >= 0) return w != 0;
    const char* nb = getenv("LOVA_VGPU_NO_BIAS_EPILOGUE");
    return nb && strcmp(nb, "1") == 0;
}

struct HeuristicResult {
    Algo algo;
    char pad[64 - sizeof(Algo)];
    size_t workspace;
    Status state;
    float waves;
    int reserved[4];
};

// Section "cublasLtMatmulAlgoGetHeuristic": two algorithms for a valid problem
// (or as many as requested, if fewer; both emulated alike, so that a caller
// choosing among candidates has a choice to make), none when the problem
// cannot run. LOVA_VGPU_NO_BIAS_EPILOGUE=1
// makes it offer none with the bias epilogue (as a library version without
// it for a shape would), to exercise the backend's separate bias kernel;
// so does vgpuWithholdBiasEpilogue(1).
API cublasLtMatmulAlgoGetHeuristic(void*, void* desc, void* a, void* b, void* c, void* d, void* pref, int requested,
                                   HeuristicResult* results, int* count) {
    *count = 0;
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    const Desc& dd = *(Desc*)desc;
    std::string why;
    Status s = validate(dd, *(Layout*)a, *(Layout*)b, *(Layout*)c, *(Layout*)d, why);
    if (s == CUBLAS_STATUS_INVALID_VALUE) {
        note("cublasLtMatmulAlgoGetHeuristic: " + why);
        return s;
    }
    if (s != CUBLAS_STATUS_SUCCESS) return CUBLAS_STATUS_SUCCESS;  // valid, but no algorithm: count 0
    if (dd.epilogue == CUBLASLT_EPILOGUE_BIAS && withhold_bias()) return CUBLAS_STATUS_SUCCESS;
    int offered = std::min(requested, 2);
    for (int i = 0; i < offered; i++) {
        memset(&results[i], 0, sizeof(HeuristicResult));
        results[i].algo.magic = kAlgoMagic;
        memcpy(results[i].algo.align, ((Pref*)pref)->align, sizeof results[i].algo.align);
        results[i].algo.variant = i;
        results[i].workspace = 0;
        results[i].state = CUBLAS_STATUS_SUCCESS;
        results[i].waves = 1.0f;
    }
    *count = offered;
    return CUBLAS_STATUS_SUCCESS;
}

// cublasLtMatmul calls so far (tests: `vgpu::matmuls`).
std::atomic<unsigned long long> g_matmuls{0};
extern "C" __attribute__((visibility("default"))) unsigned long long vgpuMatmuls() { return g_matmuls.load(); }

// Section "cublasLtMatmul": D = alpha op(A) op(B) + beta C (+ bias broadcast
// over the columns with CUBLASLT_EPILOGUE_BIAS), C and D may differ (same
// shape and type). The descriptors are read now, as the library does when it
// enqueues its kernel; the GEMM runs when the stream gets there.
API cublasLtMatmul(void*, void* desc, const void* alpha, const void* A, void* adesc, const void* B, void* bdesc,
                   const float* beta, const void* C, void* cdesc, void* D, void* ddesc, const void* algo_p, void* ws,
                   size_t ws_size, void* stream) {
    g_matmuls++;
    Desc d = *(Desc*)desc;
    Layout a = *(Layout*)adesc, b = *(Layout*)bdesc, c = *(Layout*)cdesc, dl = *(Layout*)ddesc;
    std::string why;
    if (Status s = validate(d, a, b, c, dl, why)) {
        note("cublasLtMatmul: " + why);
        return s;
    }
    if (!algo_p || ((const Algo*)algo_p)->magic != kAlgoMagic) {
        note("cublasLtMatmul: the algorithm does not come from cublasLtMatmulAlgoGetHeuristic");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    const Algo algo = *(const Algo*)algo_p;
    (void)ws;
    (void)ws_size;
    // The algorithm was chosen for pointers aligned as the preference said
    // (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES, default 256): others fail.
    const void* ptrs[4] = {A, B, C, D};
    const char* names = "ABCD";
    for (int i = 0; i < 4; i++)
        if ((uintptr_t)ptrs[i] % algo.align[i] != 0) {
            note(std::string("cublasLtMatmul: ") + names[i] + " is not aligned to " + std::to_string(algo.align[i]) +
                 " bytes, as the algorithm requires");
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    if (d.epilogue == CUBLASLT_EPILOGUE_BIAS && (d.bias == 0 || d.bias % 16 != 0)) {
        note("cublasLtMatmul: the bias epilogue needs a 16-byte aligned bias pointer");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    const float al = *(const float*)alpha, be = *beta;
    // Every operand inside a live device allocation.
    struct Range { const void* p; uint64_t bytes; const char* what; };
    std::vector<Range> ranges = {{A, span(a), "A"}, {B, span(b), "B"}, {D, span(dl), "D"}};
    if (be != 0.0f) ranges.push_back({C, span(c), "C"});
    if (d.epilogue == CUBLASLT_EPILOGUE_BIAS) ranges.push_back({(const void*)d.bias, dl.rows * 4, "bias"});
    for (auto& r : ranges)
        if (!vgpu::inside_allocation((uint64_t)r.p, r.bytes)) {
            note(std::string("cublasLtMatmul: ") + r.what + " is not inside one live device allocation");
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    int r = vgpu::enqueue(stream, "cublasLtMatmul", [=]() -> int {
        for (auto& rr : ranges)
            if (!vgpu::inside_allocation((uint64_t)rr.p, rr.bytes)) return 700;  // freed before it ran
        uint64_t m = dl.rows, n = dl.cols, k = d.transa ? a.rows : a.cols;
        std::vector<double> at(m * k), bt(k);
        for (int batch = 0; batch < dl.batch; batch++) {
            const char* ab = (const char*)A + batch * a.batch_stride * elem(a.type);
            const char* bb = (const char*)B + batch * b.batch_stride * elem(b.type);
            const char* cb = (const char*)C + batch * c.batch_stride * elem(c.type);
            char* db = (char*)D + batch * dl.batch_stride * elem(dl.type);
            // op(A) row i as at[i * k + p].
            for (uint64_t i = 0; i < m; i++)
                for (uint64_t p = 0; p < k; p++)
                    at[i * k + p] = load(a.type, ab, d.transa ? p + i * a.ld : i + p * a.ld);
            for (uint64_t j = 0; j < n; j++) {
                for (uint64_t p = 0; p < k; p++) bt[p] = load(b.type, bb, d.transb ? j + p * b.ld : p + j * b.ld);
                for (uint64_t i = 0; i < m; i++) {
                    // Four partial sums (f64), so that the loop pipelines.
                    double acc4[4] = {0, 0, 0, 0};
                    const double* ar = &at[i * k];
                    uint64_t p = 0;
                    for (; p + 4 <= k; p += 4)
                        for (int q = 0; q < 4; q++) acc4[q] += ar[p + q] * bt[p + q];
                    for (; p < k; p++) acc4[0] += ar[p] * bt[p];
                    double acc = (acc4[0] + acc4[1]) + (acc4[2] + acc4[3]);
                    double v = al * acc;
                    if (be != 0.0f) v += be * (double)load(c.type, cb, i + j * c.ld);
                    if (d.epilogue == CUBLASLT_EPILOGUE_BIAS)
                        v += load(CUDA_R_32F, (const char*)d.bias + batch * d.bias_batch_stride * 4, i);
                    store(dl.type, db, i + j * dl.ld, v);
                }
            }
        }
        return 0;
    });
    return r == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}
