// What conv1d.cu needs beyond ../flash-attention-emu/prelude.h (which emulates
// the inline-PTX helpers of kernels/common.cuh, removed from the source by
// run.sh): the output pointer replaced by one that counts the writes to each
// element.
#include <atomic>

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
