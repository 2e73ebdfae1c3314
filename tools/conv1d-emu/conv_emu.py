# Emulates kernels/conv1d.cu's conv1d_implicit_gemm thread by thread (index math,
# smem layout, MMA fragment layouts per the PTX spec), without fp16 rounding,
# against a direct reference of the CPU twin's semantics.
#
# A hand transliteration of the kernel into Python (unlike
# tools/flash-attention-emu, which compiles the kernel's own source), so it must
# be kept in step with kernels/conv1d.cu by hand. It checks the index maths
# (tiles crossing sequence ends, C_out above a tile, K not a multiple of 8,
# transposed-conv phases, no output written twice); it cannot check the
# hardware. Run: python3 tools/conv1d-emu/conv_emu.py (about a minute).
import math, random
BM, BN, BK, LD, THREADS, AROWS = 128, 64, 32, 40, 128, 16

def seq_of_row(off, count, row):
    lo, hi = 0, count
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if off[mid] <= row: lo = mid
        else: hi = mid
    return lo

def kernel(x, alpha, beta, w, bias, res, out, m_rows, n, cin, taps, dilation, pad, in_off, count, out_off, stride, grid):
    K = taps * cin
    for bz in range(grid[2]):
      for by in range(grid[1]):
        for bx in range(grid[0]):
            dil, pd, w_base = dilation, pad, 0
            row0, col0 = bx * BM, by * BN
            phase_shift = 0
            if out_off is not None:
                p = stride // 2
                dil = -1; pd = -1 if bz < p else 0
                phase_shift = (bz + stride - p) % stride
                w_base = bz * n * K
            row_lo, row_hi, row_out = [0]*BM, [0]*BM, [0]*BM
            for i in range(BM):
                r = row0 + i
                if r < m_rows:
                    b = seq_of_row(in_off, count, r); start = in_off[b]
                    row_lo[i] = start; row_hi[i] = in_off[b+1]
                    row_out[i] = out_off[b] + (r - start) * stride + phase_shift if out_off is not None else r
                else:
                    row_lo[i] = row_hi[i] = 0; row_out[i] = -1
            acc = [[[[0.0]*4 for _ in range(4)] for _ in range(4)] for _ in range(THREADS)]
            def load(k0):
                st = []
                for tid in range(THREADS):
                    a_col, a_row = 2*(tid & 15), tid >> 4
                    shift, ci, kok, al, ib = [0,0],[0,0],[False,False],[0.0,0.0],[0.0,0.0]
                    for h in range(2):
                        k = k0 + a_col + h; kok[h] = k < K
                        tap = k // cin if kok[h] else 0
                        ci[h] = k - tap*cin if kok[h] else 0
                        shift[h] = tap*dil - pd
                        if alpha is not None and kok[h]:
                            al[h] = math.exp(alpha[ci[h]]); ib[h] = 1/(math.exp(beta[ci[h]]) + 1e-9)
                    a = []
                    for i in range(AROWS):
                        lr = a_row + 8*i; r = row0 + lr
                        v = []
                        for h in range(2):
                            src = r + shift[h]
                            v.append(x[src*cin + ci[h]] if (kok[h] and row_lo[lr] <= src < row_hi[lr]) else 0.0)
                        a.append(v)
                    b_row, b_col = tid >> 1, k0 + 16*(tid & 1)
                    co = col0 + b_row
                    bvals = []
                    for j in range(16):
                        k = b_col + j
                        bvals.append(w[w_base + co*K + k] if (co < n and k < K) else 0.0)
                    st.append((a, al, ib, bvals))
                return st
            def store(st):
                As = [0.0]*(BM*LD); Bs = [0.0]*(BN*LD)
                for tid in range(THREADS):
                    a, al, ib, bvals = st[tid]
                    a_col, a_row = 2*(tid & 15), tid >> 4
                    for i in range(AROWS):
                        v0, v1 = a[i]
                        if alpha is not None:
                            s0, s1 = math.sin(al[0]*v0), math.sin(al[1]*v1)
                            v0 += ib[0]*s0*s0; v1 += ib[1]*s1*s1
                        As[(a_row + 8*i)*LD + a_col] = v0; As[(a_row + 8*i)*LD + a_col + 1] = v1
                    base = (tid >> 1)*LD + 16*(tid & 1)
                    for j in range(16): Bs[base + j] = bvals[j]
                return As, Bs
            st = load(0)
            k0 = 0
            while k0 < K:
                As, Bs = store(st)
                if k0 + BK < K: st = load(k0 + BK)
                for ks in (0, 16):
                    for warp in range(4):
                        wm, wn = (warp >> 1)*64, (warp & 1)*32
                        # registers per lane
                        bf = {}; af = {}
                        for lane in range(32):
                            g, t = lane >> 2, lane & 3
                            for nf in range(4):
                                bp = (wn + nf*8 + g)*LD + ks + 2*t
                                bf[lane, nf] = ((Bs[bp], Bs[bp+1]), (Bs[bp+8], Bs[bp+9]))
                            for mf in range(4):
                                ap = (wm + mf*16 + g)*LD + ks + 2*t
                                af[lane, mf] = ((As[ap], As[ap+1]), (As[ap+8*LD], As[ap+8*LD+1]), (As[ap+8], As[ap+9]), (As[ap+8*LD+8], As[ap+8*LD+9]))
                        for mf in range(4):
                            for nf in range(4):
                                # Assemble per PTX spec.
                                A = [[None]*16 for _ in range(16)]; B = [[None]*8 for _ in range(16)]
                                for lane in range(32):
                                    g, t = lane >> 2, lane & 3
                                    a = af[lane, mf]
                                    for i in range(2):
                                        A[g][2*t+i] = a[0][i]; A[g+8][2*t+i] = a[1][i]
                                        A[g][2*t+8+i] = a[2][i]; A[g+8][2*t+8+i] = a[3][i]
                                    b = bf[lane, nf]
                                    for i in range(2):
                                        B[2*t+i][g] = b[0][i]; B[2*t+8+i][g] = b[1][i]
                                for lane in range(32):
                                    g, t = lane >> 2, lane & 3
                                    tid = warp*32 + lane
                                    c = acc[tid][mf][nf]
                                    for e, (rr, cc) in enumerate([(g, 2*t), (g, 2*t+1), (g+8, 2*t), (g+8, 2*t+1)]):
                                        c[e] += sum(A[rr][kk]*B[kk][cc] for kk in range(16))
                k0 += BK
            for warp in range(4):
                wm, wn = (warp >> 1)*64, (warp & 1)*32
                for lane in range(32):
                    g, t = lane >> 2, lane & 3; tid = warp*32 + lane
                    for mf in range(4):
                        for half in range(2):
                            orow = row_out[wm + mf*16 + g + 8*half]
                            if orow < 0: continue
                            for nf in range(4):
                                for e in range(2):
                                    col = col0 + wn + nf*8 + 2*t + e
                                    if col < n:
                                        v = acc[tid][mf][nf][2*half + e]
                                        if bias is not None: v += bias[col]
                                        if res is not None: v += res[orow*n + col]
                                        assert out[orow*n + col] is None, "written twice"
                                        out[orow*n + col] = v

def snake(v, a, b): return v + 1/(math.exp(b)+1e-9)*math.sin(math.exp(a)*v)**2

def ref_conv(x, alpha, beta, w, bias, res, lens, cin, cout, k, d):
    p = d*(k-1)//2; off = [0]
    for l in lens: off.append(off[-1]+l)
    out = [0.0]*(off[-1]*cout)
    for b, l in enumerate(lens):
        for t in range(l):
            r = off[b]+t
            for co in range(cout):
                s = bias[co] if bias else 0.0
                for tap in range(k):
                    src = t + tap*d - p
                    if 0 <= src < l:
                        for ci in range(cin):
                            v = x[(off[b]+src)*cin+ci]
                            if alpha: v = snake(v, alpha[ci], beta[ci])
                            s += v*w[co*k*cin + tap*cin + ci]
                if res: s += res[r*cout+co]
                out[r*cout+co] = s
    return out

def ref_convt(x, alpha, beta, w, bias, lens, cin, cout, s):
    p = s//2; oi=[0]; oo=[0]
    for l in lens: oi.append(oi[-1]+l); oo.append(oo[-1]+l*s)
    out = [None]*(oo[-1]*cout)
    for b, l in enumerate(lens):
        for j in range(l*s):
            r = (j+p) % s; i0 = (j+p)//s
            for co in range(cout):
                acc = bias[co]
                for half, i in ((0, i0), (1, i0-1)):
                    if 0 <= i < l:
                        for ci in range(cin):
                            v = x[(oi[b]+i)*cin+ci]
                            if alpha: v = snake(v, alpha[ci], beta[ci])
                            acc += v*w[(r*cout+co)*2*cin + half*cin + ci]
                out[(oo[b]+j)*cout+co] = acc
    return out

def check(got, want, label):
    assert all(g is not None for g in got), label + ": unwritten output"
    err = max(abs(a-b) for a, b in zip(got, want))
    print(f"{label}: max abs {err:.2e}")
    assert err < 1e-9, label

random.seed(1)
R = lambda n: [random.uniform(-1, 1) for _ in range(n)]
for cin, cout, lens, k, d, sn, rs in [(5, 48, [200], 7, 3, True, True), (8, 70, [130, 1, 7], 7, 9, False, True), (16, 8, [3], 1, 1, True, False), (3, 2, [1], 7, 1, False, False)]:
    off=[0]
    for l in lens: off.append(off[-1]+l)
    M = off[-1]
    x, w, bias = R(M*cin), R(cout*k*cin), R(cout)
    alpha, beta = (R(cin), R(cin)) if sn else (None, None)
    res = R(M*cout) if rs else None
    out = [None]*(M*cout)
    kernel(x, alpha, beta, w, bias, res, out, M, cout, cin, k, d, d*(k-1)//2, off, len(lens), None, 1, (math.ceil(M/BM), math.ceil(cout/BN), 1))
    check(out, ref_conv(x, alpha, beta, w, bias, res, lens, cin, cout, k, d), f"conv {cin}->{cout} k{k} d{d} L{lens} snake={sn}")
for cin, cout, s, lens, sn in [(4, 6, 2, [1, 7], True), (8, 3, 4, [33], False), (3, 65, 8, [17, 2], True)]:
    oi=[0]; oo=[0]
    for l in lens: oi.append(oi[-1]+l); oo.append(oo[-1]+l*s)
    x, w, bias = R(oi[-1]*cin), R(s*cout*2*cin), R(cout)
    alpha, beta = (R(cin), R(cin)) if sn else (None, None)
    out = [None]*(oo[-1]*cout)
    kernel(x, alpha, beta, w, bias, None, out, oi[-1], cout, cin, 2, 0, 0, oi, len(lens), oo, s, (math.ceil(oi[-1]/BM), math.ceil(cout/BN), s))
    check(out, ref_convt(x, alpha, beta, w, bias, lens, cin, cout, s), f"convT {cin}->{cout} s{s} L{lens} snake={sn}")
