// CPU emulation harness for kernels/conv1d.cu (see run.sh): the launches of
// src/backend/cuda/conv.rs, an f64 reference of the CPU twin's semantics
// (src/backend/cpu/conv.rs) and the cases.
#include "kernel.inc"
#include <thread>
#include <vector>
#include <random>
#include <string>
#include <sys/mman.h>

// conv.rs: CONV_BM, CONV_BN, CONV_THREADS; mod.rs: ELEMENTWISE_THREADS.
constexpr int BM = 128, BN = 64, THREADS = 128, ELEMENTWISE_THREADS = 256;

static std::mt19937 rng(7);
static std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
}
static float round_f16(float f) { return (float)(_Float16)f; }
static std::vector<int> offsets_of(const std::vector<int>& lens, int scale = 1) {
    std::vector<int> o{0};
    for (int l : lens) o.push_back(o.back() + l * scale);
    return o;
}
static double snake(double v, float a, float b) {
    double s = sin(exp((double)a) * v);
    return v + s * s / (exp((double)b) + 1e-9);
}

// Every element written exactly once, then rel L2 and max abs error against the reference.
struct Outcome { double rel_l2, max_abs; long long unwritten, rewritten; };
static Outcome compare(const std::vector<float>& got, const std::vector<std::atomic<unsigned>>& writes,
                       const std::vector<double>& want) {
    Outcome o{0, 0, 0, 0};
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); i++) {
        unsigned n = writes[i].load();
        o.unwritten += n == 0;
        o.rewritten += n > 1;
        double d = (double)got[i] - want[i];
        if (std::isnan(d)) d = INFINITY;  // out starts as NaN
        num += d * d;
        den += want[i] * want[i];
        o.max_abs = std::max(o.max_abs, std::fabs(d));
    }
    o.rel_l2 = sqrt(num / den);
    return o;
}

// One conv (stride == 0) or transposed conv (stride s: kernel 2s, padding s/2).
struct ConvCase {
    int cin, cout;
    std::vector<int> lens;  // input lengths
    int kernel, dilation, stride;
    bool snake, residual, bias;
    bool exact;  // x and w fp16-representable: only the f32 sums round
};

// conv.rs launch_conv: grid (ceil(m_rows / 128), ceil(C_out / 64), stride), 128 threads;
// all blocks in turn, each by 128 threads (one thread per CUDA thread).
static void launch_conv(const ConvCase& c, int m_rows, int taps, int dilation, int pad, int stride, const float* x,
                        const float* alpha, const float* beta, const unsigned short* w, const float* bias,
                        const float* residual, EmuOut out, const int* in_off, int count, const int* out_off,
                        unsigned first_bx = 0) {
    gridDim = {(unsigned)((m_rows + BM - 1) / BM), (unsigned)((c.cout + BN - 1) / BN), (unsigned)stride};
    blockDim = {(unsigned)THREADS, 1, 1};
    auto worker = [&](int tid) {
        threadIdx = {(unsigned)tid, 0, 0};
        for (unsigned bz = 0; bz < gridDim.z; bz++)
            for (unsigned by = 0; by < gridDim.y; by++)
                for (unsigned bx = first_bx; bx < gridDim.x; bx++) {
                    blockIdx = {bx, by, bz};
                    conv1d_implicit_gemm(x, alpha, beta, w, bias, residual, out, m_rows, c.cout, c.cin, taps,
                                         dilation, pad, in_off, count, out_off, stride);
                    __syncthreads();  // the next block reuses the shared arrays
                }
    };
    std::vector<std::thread> th;
    for (int t = 0; t < THREADS; t++) th.emplace_back(worker, t);
    for (auto& t : th) t.join();
}

static Outcome run_conv(const ConvCase& c) {
    const bool transposed = c.stride > 0;
    const int s = c.stride, taps = transposed ? 2 : c.kernel;
    const std::vector<int> in_off = offsets_of(c.lens), out_off = offsets_of(c.lens, transposed ? s : 1);
    const int rows_in = in_off.back(), rows_out = out_off.back(), count = (int)c.lens.size();
    const int K = taps * c.cin;
    std::vector<float> x = uniform((size_t)rows_in * c.cin, -2, 2);
    const float scale = 1.0f / sqrtf((float)K);
    // conv: [C_out, K * C_in] tap-major; transposed: [s, C_out, 2 * C_in].
    std::vector<float> w = uniform((size_t)(transposed ? s : 1) * c.cout * K, -scale, scale);
    if (c.exact) {
        for (auto& v : x) v = round_f16(v);
        for (auto& v : w) v = round_f16(v);
    }
    std::vector<unsigned short> w16(w.size());
    for (size_t i = 0; i < w.size(); i++) w16[i] = f32_to_f16_bits(w[i]);
    std::vector<float> bias = uniform(c.cout, -0.5, 0.5), alpha = uniform(c.cin, -0.7, 0.7),
                       beta = uniform(c.cin, -0.7, 0.7);
    std::vector<float> residual = uniform((size_t)rows_out * c.cout, -1, 1);
    if (!c.residual) residual.clear();

    std::vector<float> out((size_t)rows_out * c.cout, NAN);
    std::vector<std::atomic<unsigned>> writes(out.size());
    EmuOut eo{out.data(), writes.data()};
    const float* a = c.snake ? alpha.data() : nullptr;
    const float* b = c.snake ? beta.data() : nullptr;
    const float* bp = c.bias ? bias.data() : nullptr;
    const float* rp = c.residual ? residual.data() : nullptr;
    if (transposed)  // conv.rs: m_rows = input rows, taps 2, dilation 0, padding 0
        launch_conv(c, rows_in, 2, 0, 0, s, x.data(), a, b, w16.data(), bp, nullptr, eo, in_off.data(), count,
                    out_off.data());
    else  // conv.rs: m_rows = rows, padding = dilation * (kernel - 1) / 2, stride 1, no output offsets
        launch_conv(c, rows_in, c.kernel, c.dilation, c.dilation * (c.kernel - 1) / 2, 1, x.data(), a, b,
                    w16.data(), bp, rp, eo, in_off.data(), count, nullptr);

    // Reference in f64 from the f32 values (w unrounded: the kernel's fp16 weights are part of its error).
    std::vector<double> act(x.size());
    for (size_t i = 0; i < x.size(); i++) act[i] = c.snake ? snake(x[i], alpha[i % c.cin], beta[i % c.cin]) : x[i];
    std::vector<double> want(out.size(), 0.0);
    for (int bq = 0; bq < count; bq++) {
        const int l = c.lens[bq];
        if (!transposed) {
            const int pad = c.dilation * (c.kernel - 1) / 2;
            for (int t = 0; t < l; t++)
                for (int co = 0; co < c.cout; co++) {
                    double acc = 0;
                    for (int tap = 0; tap < c.kernel; tap++) {
                        int src = t + tap * c.dilation - pad;
                        if (src < 0 || src >= l) continue;  // zero padding per sequence
                        for (int ci = 0; ci < c.cin; ci++)
                            acc += act[(size_t)(in_off[bq] + src) * c.cin + ci] *
                                   w[(size_t)co * K + tap * c.cin + ci];
                    }
                    want[(size_t)(in_off[bq] + t) * c.cout + co] = acc;
                }
        } else {
            // PyTorch ConvTranspose1d as a scatter: input row i, kernel tap kk in [0, 2s) adds to
            // output row i * s + kk - s / 2; W[ci, co, kk] is w[kk, co, ci] (kk < s) or
            // w[kk - s, co, C_in + ci] (the engine's layout, src/models/vae.rs).
            const int lout = l * s, p = s / 2;
            for (int i = 0; i < l; i++)
                for (int kk = 0; kk < 2 * s; kk++) {
                    int j = i * s + kk - p;
                    if (j < 0 || j >= lout) continue;
                    const int r = kk % s, half = kk / s;
                    for (int co = 0; co < c.cout; co++) {
                        double acc = 0;
                        const float* wr = &w[((size_t)r * c.cout + co) * K + half * c.cin];
                        for (int ci = 0; ci < c.cin; ci++) acc += act[(size_t)(in_off[bq] + i) * c.cin + ci] * wr[ci];
                        want[(size_t)(out_off[bq] + j) * c.cout + co] += acc;
                    }
                }
        }
    }
    for (int r = 0; r < rows_out; r++)
        for (int co = 0; co < c.cout; co++) {
            double& v = want[(size_t)r * c.cout + co];
            if (c.bias) v += bias[co];
            if (c.residual) v += residual[(size_t)r * c.cout + co];
        }
    return compare(out, writes, want);
}

// Zero-filled memory of which only the touched pages are backed: buffers of several GiB of
// which the harness uses the end.
template <class T> static T* sparse_alloc(size_t n) {
    void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return static_cast<T*>(p);
}

// Element offsets past 2^31: a long sequence then a short one, of which only the last two block
// rows of the grid run (the launch is the full one); the outputs of their rows are compared with
// the f64 reference (the CPU twin's gather form) and counted. An int32 offset anywhere (x, w,
// residual, out) would read or write elsewhere: wrong values, unwritten elements or a fault.
static Outcome run_large(const ConvCase& c) {
    const bool transposed = c.stride > 0;
    const int s = transposed ? c.stride : 1, taps = transposed ? 2 : c.kernel;
    const int pad = transposed ? 0 : c.dilation * (c.kernel - 1) / 2;
    const std::vector<int> in_off = offsets_of(c.lens), out_off = offsets_of(c.lens, s);
    const long long rows_in = in_off.back(), rows_out = out_off.back();
    const int count = (int)c.lens.size(), K = taps * c.cin;
    const unsigned grid_x = (unsigned)((rows_in + BM - 1) / BM), first_bx = grid_x - 2;
    const long long r_first = (long long)first_bx * BM;  // input rows [r_first, rows_in) run
    float* x = sparse_alloc<float>(rows_in * c.cin);
    float* residual = sparse_alloc<float>(rows_out * c.cout);
    float* out = sparse_alloc<float>(rows_out * c.cout);
    auto* writes = sparse_alloc<std::atomic<unsigned>>(rows_out * c.cout);
    // Input rows the run blocks read (the conv's taps reach `pad` rows back, the transposed conv's 1).
    const long long x_first = std::max(0LL, r_first - std::max(pad, 1));
    std::vector<float> xs = uniform((rows_in - x_first) * c.cin, -2, 2);
    for (size_t i = 0; i < xs.size(); i++) x[x_first * c.cin + i] = round_f16(xs[i]);
    const float scale = 1.0f / sqrtf((float)K);
    std::vector<float> w = uniform((size_t)s * c.cout * K, -scale, scale);
    for (auto& v : w) v = round_f16(v);
    std::vector<unsigned short> w16(w.size());
    for (size_t i = 0; i < w.size(); i++) w16[i] = f32_to_f16_bits(w[i]);
    std::vector<float> bias = uniform(c.cout, -0.5, 0.5);
    // The output rows the run blocks produce, per input row i in [r_first, rows_in) and phase.
    std::vector<long long> rows;
    for (long long i = r_first; i < rows_in; i++) {
        int b = 0;
        while (in_off[b + 1] <= i) b++;
        for (int q = 0; q < s; q++) rows.push_back(out_off[b] + (i - in_off[b]) * s + q);
    }
    std::vector<float> res_vals = uniform(rows.size() * c.cout, -1, 1);
    for (size_t k = 0; k < rows.size(); k++)
        for (int co = 0; co < c.cout; co++) {
            out[rows[k] * c.cout + co] = NAN;
            if (c.residual) residual[rows[k] * c.cout + co] = res_vals[k * c.cout + co];
        }
    launch_conv(c, (int)rows_in, taps, transposed ? 0 : c.dilation, pad, s, x, nullptr, nullptr, w16.data(),
                bias.data(), c.residual ? residual : nullptr, EmuOut{out, writes}, in_off.data(), count,
                transposed ? out_off.data() : nullptr, first_bx);
    std::vector<float> got;
    std::vector<std::atomic<unsigned>> got_writes(rows.size() * c.cout);
    std::vector<double> want;
    for (size_t k = 0; k < rows.size(); k++) {
        const long long j = rows[k];
        int b = 0;
        while (out_off[b + 1] <= j) b++;
        const long long t = j - out_off[b], l = c.lens[b];
        for (int co = 0; co < c.cout; co++) {
            double acc = bias[co] + (c.residual ? residual[j * c.cout + co] : 0.0);
            for (int tap = 0; tap < taps; tap++) {
                // conv: source row t + tap * dilation - pad; transposed (kernel 2s, padding s/2):
                // phase r = (t + p) % s reads rows (t + p) / s - tap with w[r][tap * C_in ...].
                const long long p = s / 2, src = transposed ? (t + p) / s - tap : t + tap * c.dilation - pad;
                if (src < 0 || src >= l) continue;
                const float* wr = &w[((size_t)(transposed ? (t + p) % s : 0) * c.cout + co) * K +
                                     (transposed ? tap * c.cin : (size_t)tap * c.cin)];
                for (int ci = 0; ci < c.cin; ci++) acc += (double)x[(in_off[b] + src) * c.cin + ci] * wr[ci];
            }
            want.push_back(acc);
            got.push_back(out[j * c.cout + co]);
            got_writes[k * c.cout + co] = writes[j * c.cout + co].load();
        }
    }
    munmap(x, rows_in * c.cin * sizeof(float));
    munmap(residual, rows_out * c.cout * sizeof(float));
    munmap(out, rows_out * c.cout * sizeof(float));
    munmap(writes, rows_out * c.cout * sizeof(std::atomic<unsigned>));
    return compare(got, got_writes, want);
}

// mod.rs launch_elementwise: grid min(ceil(n / 256), 2^20), 256 threads; `grid` overrides it
// to exercise the grid-stride loop. The kernel has no barrier: its threads run in turn.
static Outcome run_snake(int rows, int cols, unsigned grid) {
    const long long n = (long long)rows * cols;
    std::vector<float> x = uniform(n, -4, 4), alpha = uniform(cols, -0.7, 0.7), beta = uniform(cols, -0.7, 0.7);
    std::vector<float> out(n, NAN);
    std::vector<std::atomic<unsigned>> writes(n);
    gridDim = {grid ? grid : (unsigned)std::min<long long>((n + ELEMENTWISE_THREADS - 1) / ELEMENTWISE_THREADS, 1 << 20),
               1, 1};
    blockDim = {(unsigned)ELEMENTWISE_THREADS, 1, 1};
    for (unsigned bx = 0; bx < gridDim.x; bx++)
        for (int t = 0; t < ELEMENTWISE_THREADS; t++) {
            blockIdx = {bx, 0, 0};
            threadIdx = {(unsigned)t, 0, 0};
            snake_beta_f32(x.data(), alpha.data(), beta.data(), EmuOut{out.data(), writes.data()}, n, cols);
        }
    std::vector<double> want(n);
    for (long long i = 0; i < n; i++) want[i] = snake(x[i], alpha[i % cols], beta[i % cols]);
    return compare(out, writes, want);
}

static bool report(const std::string& label, const Outcome& o, double tol) {
    bool ok = o.rel_l2 <= tol && o.unwritten == 0 && o.rewritten == 0;
    printf("%-58s rel L2 %.2e  max abs %.2e  (tol %.0e)", label.c_str(), o.rel_l2, o.max_abs, tol);
    if (o.unwritten || o.rewritten) printf("  %lld unwritten, %lld written twice", o.unwritten, o.rewritten);
    printf("%s\n", ok ? "" : "  FAIL");
    fflush(stdout);
    return ok;
}

// Fails (exit 1) when a case exceeds its tolerance or an element is not written exactly once;
// --first-failure: stops at the first such case (mutants.sh).
int main(int argc, char** argv) {
    const bool first_failure = argc > 1 && std::string(argv[1]) == "--first-failure";
    block_bar = new std::barrier<>(THREADS);
    for (int w = 0; w < 4; w++) warp_bar[w] = new std::barrier<>(32);
    // cin, cout, lens, kernel, dilation, stride (0: conv), snake, residual, bias, exact
    const std::vector<ConvCase> cases = {
        // A latent of length 1 through the first conv (64 -> C).
        {64, 128, {1}, 7, 1, 0, false, false, true, true},
        // Length no multiple of the 128-row tile, C_out no multiple of 64.
        {32, 48, {200}, 7, 3, 0, true, true, true, false},
        // Three sequences sharing tiles; dilation 9 reaches past the short ones.
        {40, 64, {130, 1, 77}, 7, 9, 0, true, true, true, false},
        {40, 64, {130, 1, 77}, 7, 9, 0, false, true, true, true},
        // fp16 rounding of x and w (no snake): the operand rounding error alone.
        {64, 96, {300}, 7, 1, 0, false, false, true, false},
        // The residual unit's 1x1 conv.
        {128, 128, {300}, 1, 1, 0, true, true, true, false},
        {128, 128, {257, 3}, 1, 1, 0, false, false, true, true},
        // K = 21, 35, 12: no multiple of 8 (element-wise weight load) nor of BK = 32; C_in 3, 5.
        {3, 5, {9, 4}, 7, 1, 0, false, true, true, true},
        {3, 5, {9, 4}, 7, 3, 0, true, false, true, false},
        {5, 70, {1, 130, 7, 1}, 7, 9, 0, false, true, false, true},
        // Many short sequences, one crossing the tile boundary; C_out 72 > 64.
        {16, 72, {1, 1, 2, 1, 129, 1, 3}, 7, 3, 0, false, true, true, true},
        // Many K tiles (K = 1792), C_out 160 = 2.5 tiles.
        {256, 160, {150, 1, 40}, 7, 1, 0, true, false, true, false},
        // The final conv: 128 -> 2 channels.
        {128, 2, {257}, 7, 1, 0, true, false, true, false},
        // Lengths that fill whole tiles; a 1x1 conv with odd C_in (K = 7).
        {24, 64, {128, 256}, 7, 9, 0, true, true, true, false},
        {7, 40, {128, 5}, 1, 1, 0, false, true, true, true},
        // Transposed convs, strides 2, 4, 8.
        {16, 24, {1, 7}, 0, 0, 2, true, false, true, false},
        {128, 128, {70}, 0, 0, 2, false, false, true, true},
        {3, 65, {129, 1}, 0, 0, 2, true, false, true, false},
        {64, 32, {33}, 0, 0, 4, false, false, true, true},
        {64, 32, {1, 40, 2}, 0, 0, 4, true, false, false, false},
        {256, 128, {17, 2}, 0, 0, 8, true, false, true, false},
        {6, 70, {1, 130, 3}, 0, 0, 8, false, false, true, true},
    };
    // The slowest last: the decoder's widest K, 2048 input channels (on a few of the outputs).
    const std::vector<ConvCase> wide = {
        {2048, 128, {5}, 7, 1, 0, true, false, true, false},  // K = 14336
        {2048, 128, {5}, 7, 1, 0, false, false, true, true},
        {2048, 64, {3}, 0, 0, 8, true, false, true, false},  // the first upsampling (to 1024 channels)
    };
    int failures = 0;
    auto check = [&](const std::string& label, const Outcome& o, double tol) {
        failures += !report(label, o, tol);
        if (failures && first_failure) exit(1);
    };
    auto check_conv = [&](const ConvCase& c) {
        const int K = (c.stride ? 2 : c.kernel) * c.cin;
        // As tests/backend_ops.rs: exact operands: 1e-5, growing like sqrt(K) beyond K = 1536;
        // fp16-rounded operands: 3e-3 (expected ~3e-4).
        const double tol = c.exact ? 1e-5 * std::max(1.0, sqrt(K / 1536.0)) : 3e-3;
        std::string label = c.stride ? "convT s" + std::to_string(c.stride)
                                     : "conv k" + std::to_string(c.kernel) + " d" + std::to_string(c.dilation);
        label += " " + std::to_string(c.cin) + "->" + std::to_string(c.cout) + " L[";
        for (size_t i = 0; i < c.lens.size(); i++) label += (i ? " " : "") + std::to_string(c.lens[i]);
        label += "]";
        label += c.exact ? " exact" : " fp16";
        if (c.snake) label += " +snake";
        if (c.residual) label += " +res";
        if (!c.bias) label += " nobias";
        check(label, run_conv(c), tol);
    };
    for (const auto& c : cases) check_conv(c);
    // Element offsets past 2^31 (the decoder's last stages hold 2048 L rows x 128 channels,
    // > 2^31 elements from a packed latent length L of 8192). The tails of the grids only.
    const std::vector<ConvCase> large = {
        // x, residual and out offsets past 2^31: 16.8 M rows x 128 channels.
        {128, 128, {(int)((1LL << 31) / 128) + 300, 5}, 7, 3, 0, false, true, true, true},
        // out offsets past 2^31: 8.4 M input rows x 2 = 16.8 M output rows x 128 channels.
        {64, 128, {(int)((1LL << 31) / 128 / 2) + 100, 3}, 0, 0, 2, false, false, true, true},
    };
    for (const auto& c : large) {
        const long long rows_out = ((long long)c.lens[0] + c.lens[1]) * std::max(c.stride, 1);
        std::string label = (c.stride ? "convT s" + std::to_string(c.stride) : "conv k" + std::to_string(c.kernel)) +
                            " " + std::to_string(c.cin) + "->" + std::to_string(c.cout) + " rows " +
                            std::to_string(rows_out) + " (" + std::to_string(rows_out * c.cout) + " el.) tail";
        const int K = (c.stride ? 2 : c.kernel) * c.cin;
        check(label, run_large(c), 1e-5 * std::max(1.0, sqrt(K / 1536.0)));
    }
    // snake_beta_f32: sinf and expf in f32 against f64.
    check("snake_beta [1, 1]", run_snake(1, 1, 0), 1e-6);
    check("snake_beta [37, 130]", run_snake(37, 130, 0), 1e-6);
    check("snake_beta [300, 7], 3 blocks (grid-stride loop)", run_snake(300, 7, 3), 1e-6);
    for (const auto& c : wide) check_conv(c);
    if (failures) printf("%d case(s) FAILED\n", failures);
    return failures ? 1 : 0;
}
