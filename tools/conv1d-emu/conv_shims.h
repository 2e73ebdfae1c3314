// What conv1d.cu needs beyond ../flash-attention-emu/prelude.h: its inline-PTX
// helpers (removed from the source by run.sh) emulated, and the output pointer
// replaced by one that counts the writes to each element.
#include <atomic>

// cvt.rn.f16.f32.
static inline unsigned short conv_f32_to_f16(float f) { return f32_to_f16_bits(f); }

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, c += a * b (prelude.h: PTX fragment layouts).
static inline void conv_mma(float* c, const unsigned int* a, const unsigned int* b) {
    mma_16816(*reinterpret_cast<float(*)[4]>(c), *reinterpret_cast<const unsigned(*)[4]>(a), b[0], b[1]);
}

// Stands in for the kernels' `float* __restrict__ out`: `out[i] = v` stores v
// and counts the write, so the harness can check every element is written once.
struct EmuOut {
    float* data;
    std::atomic<unsigned>* writes;
    struct Ref {
        float* p;
        std::atomic<unsigned>* n;
        void operator=(float v) const {
            *p = v;
            n->fetch_add(1, std::memory_order_relaxed);
        }
    };
    Ref operator[](long long i) const { return {data + i, writes + i}; }
};
