// CPU emulation harness for kernels/flash_attention.cu (see run.sh): the f64 reference and the cases.
#include "kernel.inc"
#include <thread>
#include <vector>
#include <cstdio>
#include <random>

struct Case { int heads, kv_heads, rotary; std::vector<int> ql, kl; bool self_; };

static double run_case(const Case& c, unsigned seed) {
    const int hd = 64;
    std::vector<int> qo{0}, ko{0}, ts{0};
    for (size_t b = 0; b < c.ql.size(); b++) {
        qo.push_back(qo.back() + c.ql[b]);
        ko.push_back(ko.back() + (c.self_ ? c.ql[b] : c.kl[b]));
        ts.push_back(ts.back() + (c.ql[b] + 63) / 64);
    }
    int Mq = qo.back(), Mk = ko.back(), count = c.ql.size();
    int qw = c.heads * hd, kvw = c.kv_heads * hd;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> U(-2.f, 2.f);
    // self: one qkv tensor [Mq, qw + 2 kvw]; cross: q [Mq, qw], kv [Mk, 2 kvw]
    std::vector<float> qbuf, kvbuf;
    int q_ld, k_ld;
    const float *qp, *kp, *vp;
    if (c.self_) {
        q_ld = k_ld = qw + 2 * kvw;
        qbuf.resize((size_t)Mq * q_ld);
        for (auto& x : qbuf) x = U(rng);
        qp = qbuf.data(); kp = qbuf.data() + qw; vp = qbuf.data() + qw + kvw;
    } else {
        q_ld = qw; k_ld = 2 * kvw;
        qbuf.resize((size_t)Mq * q_ld); kvbuf.resize((size_t)Mk * k_ld);
        for (auto& x : qbuf) x = U(rng);
        for (auto& x : kvbuf) x = U(rng);
        qp = qbuf.data(); kp = kvbuf.data(); vp = kvbuf.data() + kvw;
    }
    std::vector<float> inv(32);
    for (int i = 0; i < c.rotary / 2; i++) inv[i] = powf(10000.f, -(float)(2 * i) / c.rotary);
    // The RoPE angle table the backend makes (src/backend/cuda/attention.rs, rope_table):
    // per position of the longest sequence, 16 (cos, sin) pairs in f64 rounded to f32.
    int positions = 1;
    for (size_t b = 0; b < c.ql.size(); b++) positions = std::max({positions, c.ql[b], c.self_ ? 0 : c.kl[b]});
    std::vector<float2> table((size_t)positions * 16, float2{0.f, 0.f});
    for (int p = 0; p < positions; p++)
        for (int i = 0; i < c.rotary / 2; i++) {
            double ang = (double)p * (double)inv[i];
            table[(size_t)p * 16 + i] = float2{(float)cos(ang), (float)sin(ang)};
        }
    std::vector<float> out((size_t)Mq * qw, 12345.f);
    int total_tiles = ts.back();
    auto worker = [&](int tid) {
        threadIdx = {(unsigned)tid, 0, 0};
        for (int by = 0; by < c.heads; by++)
            for (int bx = 0; bx < total_tiles; bx++) {
                blockIdx = {(unsigned)bx, (unsigned)by, 0};
                flash_attention_hd64(qp, q_ld, kp, k_ld, vp, k_ld, qo.data(), ko.data(), ts.data(), count, c.heads,
                                     c.kv_heads, 0.125f, c.rotary ? table.data() : nullptr, c.rotary, out.data(), qw);
                __syncthreads();
            }
    };
    std::vector<std::thread> th;
    for (int t = 0; t < 128; t++) th.emplace_back(worker, t);
    for (auto& t : th) t.join();
    // reference in double
    auto rope = [&](const float* src, int pos, double* dst) {
        for (int d = 0; d < hd; d++) dst[d] = src[d];
        int half = c.rotary / 2;
        for (int i = 0; i < half; i++) {
            double a = src[i], b = src[i + half], ang = (double)pos * (double)inv[i];
            dst[i] = a * cos(ang) - b * sin(ang);
            dst[i + half] = b * cos(ang) + a * sin(ang);
        }
    };
    double num = 0, den = 0;
    int group = c.heads / c.kv_heads;
    for (int b = 0; b < count; b++)
        for (int h = 0; h < c.heads; h++) {
            int kvh = h / group, nk = ko[b + 1] - ko[b];
            std::vector<double> K((size_t)nk * hd), V((size_t)nk * hd);
            for (int j = 0; j < nk; j++) {
                rope(kp + (size_t)(ko[b] + j) * k_ld + kvh * hd, j, &K[j * hd]);
                for (int d = 0; d < hd; d++) V[j * hd + d] = vp[(size_t)(ko[b] + j) * k_ld + kvh * hd + d];
            }
            for (int i = 0; i < c.ql[b]; i++) {
                double q[64];
                rope(qp + (size_t)(qo[b] + i) * q_ld + h * hd, i, q);
                std::vector<double> s(nk);
                double m = -1e300;
                for (int j = 0; j < nk; j++) {
                    double acc = 0;
                    for (int d = 0; d < hd; d++) acc += q[d] * K[j * hd + d];
                    s[j] = acc * 0.125; m = std::max(m, s[j]);
                }
                double z = 0;
                for (int j = 0; j < nk; j++) { s[j] = exp(s[j] - m); z += s[j]; }
                for (int d = 0; d < hd; d++) {
                    double o = 0;
                    for (int j = 0; j < nk; j++) o += s[j] * V[j * hd + d];
                    o = nk ? o / z : 0;
                    double got = out[(size_t)(qo[b] + i) * qw + h * hd + d];
                    num += (got - o) * (got - o); den += o * o;
                }
            }
        }
    return sqrt(num / den);
}

int main() {
    // Fails (exit 1) when a case's relative L2 error exceeds the op test's flash tolerance.
    const double tol = 3e-3;
    int failures = 0;
    block_bar = new std::barrier<>(128);
    for (int w = 0; w < 4; w++) warp_bar[w] = new std::barrier<>(32);
    std::vector<Case> cases = {
        {4, 4, 32, {1}, {}, true},
        {4, 4, 32, {65}, {}, true},
        {2, 2, 32, {1, 2, 63, 0, 64, 65, 130}, {}, true},
        {2, 2, 32, {40, 129}, {}, true},
        {4, 2, 0, {5, 130, 1}, {3, 80, 1}, false},
        {4, 1, 0, {3, 70}, {200, 0}, false},
        {2, 2, 32, {300}, {}, true},
        {2, 2, 16, {70}, {}, true},
        {1, 1, 8, {33, 64}, {}, true},
        {1, 1, 32, {1100}, {}, true},
        {24, 12, 0, {70, 9}, {50, 130}, false},
    };
    for (auto& c : cases) {
        double e = run_case(c, 7);
        printf("heads %d kv %d rope %d q[", c.heads, c.kv_heads, c.rotary);
        for (int l : c.ql) printf("%d ", l);
        printf("] %s: rel L2 %.3e%s\n", c.self_ ? "self" : "cross", e, e <= tol ? "" : "  FAIL");
        failures += !(e <= tol);
    }
    return failures ? 1 : 0;
}
