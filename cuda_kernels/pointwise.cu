// Per-pixel delta kernels: linear combinations, accumulation, and the
// accumulate-recompute-truncate rule of non-linear ops (docs/ARCHITECTURE.md §1).
//
// Layout: a group of `lanes` threads (a power of two ≤ 256, about C / 4) handles one
// pixel (n, y, x) of an output of shape (N, C, H, W); its lanes stride over the channels.
// Blocks first list their pixels with work (block_list in common.cuh: one mask read per
// pixel), then only listed pixels are given to groups: a pixel whose candidate flag is
// clear reads no values and writes only its mask byte, so both the values traffic and
// the threads spent scale with the updated area.
//
// Operands are deltas (values + mask) addressed by strides; a stride of 0 broadcasts
// (an operand of shape (N, C, 1, 1) against (N, C, H, W), or C == 1).
#include "common.cuh"

// Channels per thread that pw_truncate keeps in registers between its two passes.
#define TRUNC_REGS 8

// One delta operand of a per-pixel kernel.
#define DC_OPERAND(i)                                                                 \
    const scalar_t *v##i, int v##i##N, int v##i##C, int v##i##H, int v##i##W,         \
        const mask_t *m##i, int m##i##N, int m##i##H, int m##i##W, float k##i

#define DC_MASK_ARGS(i) m##i, m##i##N, m##i##H, m##i##W
#define DC_VALUE(i, n, c, y, x) to_f(v##i[off4(n, c, y, x, v##i##N, v##i##C, v##i##H, v##i##W)])

// Functions of accumulated inputs beyond the element-wise activations of common.cuh:
// FN_PRODUCT (v = a0 · a1) and FN_LAYER_NORM (over channels), defined by PixelFunction
// in deltaconvert/backends/cuda/constants.py.

// Operand flags of this thread's scanned pixel (0 past the end): bit 0 operand 0's mask,
// bit 1 operand 1's (read only if n_ops > 1).
__device__ __forceinline__ int operand_flags(const ScanPixel &sp, int H, int W, int n_ops,
                                             const mask_t *m0, int m0N, int m0H, int m0W,
                                             const mask_t *m1, int m1N, int m1H, int m1W) {
    if (!sp.valid) return 0;
    const Pixel q = pixel_at(sp.pixel, H, W);
    return (int)(m0[off3(q.n, q.y, q.x, m0N, m0H, m0W)] != 0) |
           ((int)(n_ops > 1 && m1[off3(q.n, q.y, q.x, m1N, m1H, m1W)] != 0) << 1);
}

// The channels of one listed pixel (n, y, x) of pw_linear, V at a time from channel
// V · sub on, in strides of V · lanes (`flags`: which operands' masks are set there):
// out = round(s[c] · Σ_i k_i · δ_i) and, with `sum`, sum += out, total = round(sum).
// Every element's arithmetic is the same whatever V: only the loads are wider.
template <int V>
__device__ __forceinline__ void linear_channels(int n, int y, int x, int sub, int lanes, int flags, int C,
                                                DC_OPERAND(0), DC_OPERAND(1), const float *scale,
                                                int scale_stride, scalar_t *out, int oN, int oC, int oH,
                                                int oW, float *sum, int tN, int tC, int tH, int tW,
                                                scalar_t *total) {
#pragma unroll(V == 1 ? 4 : 1)
    for (int c = V * sub; c < C; c += V * lanes) {
        float s[V] = {}, t[V];
        if (flags & 1) {
            load_vec<V>(v0 + off4(n, c, y, x, v0N, v0C, v0H, v0W), t);
#pragma unroll
            for (int j = 0; j < V; ++j) s[j] += k0 * t[j];
        }
        if (flags & 2) {
            load_vec<V>(v1 + off4(n, c, y, x, v1N, v1C, v1H, v1W), t);
#pragma unroll
            for (int j = 0; j < V; ++j) s[j] += k1 * t[j];
        }
        if (scale)
#pragma unroll
            for (int j = 0; j < V; ++j) s[j] *= round_s(scale[(c + j) * scale_stride]);
#pragma unroll
        for (int j = 0; j < V; ++j) s[j] = round_s(s[j]);  // the sent value, exactly stored
        store_vec<V>(out + off4(n, c, y, x, oN, oC, oH, oW), s);
        if (sum) {
            const int at = off4(n, c, y, x, tN, tC, tH, tW);
            float running[V];
            load_vec<V>(sum + at, running);
#pragma unroll
            for (int j = 0; j < V; ++j) running[j] += s[j];
            store_vec<V>(sum + at, running);
            store_vec<V>(total + at, running);
        }
    }
}

// out = s[c] · Σ_i k_i · δ_i, on the union of the operand masks. Ops: add, sub (k = ±α),
// neg, scaling by a constant (ChannelScale, multiplication by a constant tensor). The
// output pixels are appended to out_list (may be null: see list_append in common.cuh).
// `scale` (fp32, may be null) is indexed c * scale_stride and rounded to the model dtype.
// With `clean`, out is 0 at every other pixel (a clean delta, see truncate_whole).
// With `sum` (fp32, else null) the op keeps its output's running total: where out is
// written, sum += out (the rounded value sent) and total = round(sum) (model dtype, the
// strides of sum), the whole value a dense layer downstream reads. `vec`: the channels
// of one load (linear_channels), 8 or 4 where C, every channel stride and every pixel's
// alignment allow, else 1 (linear() in backends/cuda/pointwise.py).
extern "C" __global__ void pw_linear(int N, int C, int H, int W, int lanes, int span, int n_ops,
                                     DC_OPERAND(0), DC_OPERAND(1),
                                     const float *scale, int scale_stride,
                                     scalar_t *out, int oN, int oC, int oH, int oW,
                                     mask_t *om, int *counter, int *out_list, int *out_count,
                                     int clean, float *sum, int tN, int tC, int tH, int tW,
                                     scalar_t *total, int vec) {
    DC_GRID_START();
    __shared__ int list[DC_BLOCK];
    const ScanPixel sp = scan_pixel(N * H * W, span, blockIdx.x * span);
    const int flags = operand_flags(sp, H, W, n_ops, DC_MASK_ARGS(0), DC_MASK_ARGS(1));
    if (sp.valid) om[sp.pixel] = flags != 0;
    if (clean && sp.valid && !flags) {
        const Pixel q = pixel_at(sp.pixel, H, W);
        for (int c = 0; c < C; ++c)
            out[off4(q.n, c, q.y, q.x, oN, oC, oH, oW)] = from_f<scalar_t>(0.f);
    }
    const int count = block_list(flags != 0, ((int)threadIdx.x << 2) | flags, list);
    if (counter && threadIdx.x == 0 && count) atomicAdd(counter, count);  // = the mask bytes set
    list_append(list, count, 2, sp.base, out_list, out_count);
    for (int r0 = 0; r0 < count; r0 += DC_BLOCK / lanes) {
        const ListPixel p = list_pixel(list, count, r0, lanes, sp.base, H, W);
        if (!p.cand) continue;
#define LINEAR_CHANNELS(V)                                                                         \
    linear_channels<V>(p.at.n, p.at.y, p.at.x, p.sub, lanes, p.flags, C, v0, v0N, v0C, v0H, v0W, m0, \
                       m0N, m0H, m0W, k0, v1, v1N, v1C, v1H, v1W, m1, m1N, m1H, m1W, k1, scale,       \
                       scale_stride, out, oN, oC, oH, oW, sum, tN, tC, tH, tW, total)
        if (vec == 8)
            LINEAR_CHANNELS(8);
        else if (vec == 4)
            LINEAR_CHANNELS(4);
        else
            LINEAR_CHANNELS(1);
#undef LINEAR_CHANNELS
    }
}

// a += δ where the mask is set (a: fp32 state of the operand's own shape).
// Used by Densify (y += δ) and to accumulate the inputs of products and max pooling.
extern "C" __global__ void pw_accumulate(int N, int C, int H, int W, int lanes, int span,
                                         DC_OPERAND(0), float *a, int aN, int aC, int aH, int aW) {
    DC_GRID_START();
    __shared__ int list[DC_BLOCK];
    const ScanPixel sp = scan_pixel(N * H * W, span, blockIdx.x * span);
    const int flags = operand_flags(sp, H, W, 1, DC_MASK_ARGS(0), DC_MASK_ARGS(0));
    const int count = block_list(flags != 0, ((int)threadIdx.x << 2) | flags, list);
    for (int r0 = 0; r0 < count; r0 += DC_BLOCK / lanes) {
        const ListPixel p = list_pixel(list, count, r0, lanes, sp.base, H, W);
        if (!p.cand) continue;
        const int n = p.at.n, y = p.at.y, x = p.at.x;
#pragma unroll 4
        for (int c = p.sub; c < C; c += lanes) {
            float *dst = a + off4(n, c, y, x, aN, aC, aH, aW);
            *dst = *dst + DC_VALUE(0, n, c, y, x);
        }
    }
}

// pw_accumulate over flat storage (accumulate() in backends/cuda/pointwise.py): a += δ
// where the mask is set, for `count` elements that a and δ lay out alike without gaps
// (the element index is the offset), NCHW or, with `nhwc`, NHWC; the mask (N, 1, H, W)
// contiguous, so element i lies at pixel i / C (NHWC) or (i / (C·HW))·HW + i % HW
// (NCHW). Threads stride flat over the elements in groups of V (`vec`: 4, where count,
// C (NHWC) or HW (NCHW) and the alignment of a and δ allow, else 1; a group of 4 is one
// pixel's channels or one channel's pixels); a group whose pixels are all clear reads
// nothing.
template <int V>
__device__ __forceinline__ void accumulate_elements(int count, int C, int HW, int nhwc,
                                                    const scalar_t *d, const mask_t *m, float *a) {
    const int stride = gridDim.x * blockDim.x * V;
    for (int i = (blockIdx.x * blockDim.x + threadIdx.x) * V; i < count; i += stride) {
        bool set[V], any = false;
        if (nhwc) {
            set[0] = m[i / C] != 0;
#pragma unroll
            for (int j = 1; j < V; ++j) set[j] = set[0];
        } else {
            const int pixel = (i / (C * HW)) * HW + i % HW;
#pragma unroll
            for (int j = 0; j < V; ++j) set[j] = m[pixel + j] != 0;
        }
#pragma unroll
        for (int j = 0; j < V; ++j) any |= set[j];
        if (!any) continue;
        float t[V], v[V];
        load_vec<V>(d + i, t);
        load_vec<V>(a + i, v);
#pragma unroll
        for (int j = 0; j < V; ++j)
            if (set[j]) v[j] += t[j];  // as pw_accumulate: a clear pixel's δ is not read
        store_vec<V>(a + i, v);
    }
}

extern "C" __global__ void pw_accumulate_flat(int count, int C, int HW, int nhwc, const scalar_t *d,
                                              const mask_t *m, float *a, int vec) {
    DC_GRID_START();
    if (vec == 4)
        accumulate_elements<4>(count, C, HW, nhwc, d, m, a);
    else
        accumulate_elements<1>(count, C, HW, nhwc, d, m, a);
}

// Accumulate, recompute, truncate, for every output pixel whose candidate flag (the OR
// of the operand masks) is set:
//   in_mode ADD:    a0 += round(s[c] · Σ_i k_i · δ_i)  (fused linear producer)
//   in_mode ASSIGN: a0  = round(s[c] · Σ_i k_i · δ_i + shift[c])  (a dense layer's
//                   pre-activation from whole values; shift: the biases, may be null)
//   v  = F(a0[, a1])                                   (fn: activation, product, norm)
//   δy = v − o;  emit iff max_c |δy| > thr;  where emitted: o ← v, out = δy.
// With in_mode ACCUMULATED the operands contribute only their masks (inputs already
// accumulated, e.g. by a convolution epilogue or pw_accumulate). (TruncateInput in
// deltaconvert/backends/cuda/constants.py.) Masks of non-emitted pixels are 0.
// out may be null: no δy is stored (every reader of the output reads its total, the
// sent values o). Update counters (may be null): `counter` += emitted pixels,
// `cand_counter` += candidate pixels (the mask of a fused linear producer, the OR of the
// operand masks). Emitted pixels are appended to out_list (may be null: see
// list_append in common.cuh), and the output pixels of the `targets` convs that read
// them are marked in those convs' masks and lists (mark_conv_outputs in common.cuh; the
// …_marking kernels only). With
// in_list (else null) the candidates are the pixels listed there instead of a mask scan:
// one operand whose mask that list holds, om zeroed by the host, N·H·W < 2^29 (tags).
// vec: the channels of one vector load, 4 where C, every channel stride and every
// pixel's alignment allow, else 1 (see truncate() in backends/cuda/pointwise.py).
// The whole-map kernels (pw_truncate_whole, …_masked, …_added, …_whole_marking) take the
// same arguments for a whole map (truncate_whole below; there vec may also be 8; in_list
// is not read), and `clean` last.
#define TRUNC_PARAMS                                                                    \
    const ConvTargets targets, int N, int C, int H, int W, int lanes, int span,         \
        int n_ops, int in_mode, DC_OPERAND(0), DC_OPERAND(1), const float *scale,       \
        int scale_stride, const float *shift, int fn, float p0, float p1, float *a0,    \
        int a0N, int a0C, int a0H, int a0W, const float *a1, int a1N, int a1C,          \
        int a1H, int a1W, const float *norm_w, const float *norm_b, scalar_t *o,        \
        int sN, int sC, int sH, int sW, float thr, scalar_t *out, int oN, int oC,       \
        int oH, int oW, mask_t *om, int *counter, int *cand_counter, int *out_list,     \
        int *out_count, const int *in_list, const int *in_count
#define TRUNC_ARGS                                                                      \
    targets, N, C, H, W, lanes, span, n_ops, in_mode, v0, v0N, v0C, v0H, v0W, m0,       \
        m0N, m0H, m0W, k0, v1, v1N, v1C, v1H, v1W, m1, m1N, m1H, m1W, k1, scale,        \
        scale_stride, shift, fn, p0, p1, a0, a0N, a0C, a0H, a0W, a1, a1N, a1C, a1H,     \
        a1W, norm_w, norm_b, o, sN, sC, sH, sW, thr, out, oN, oC, oH, oW, om,           \
        counter, cand_counter, out_list, out_count, in_list, in_count

// Operand i's δ at V channels from c on at pixel (n, y, x), added to s times k_i.
#define TRUNC_ADD_OPERAND(i, s)                                                             \
    do {                                                                                   \
        float t_[V];                                                                       \
        load_vec<V>(v##i + off4(n, c, y, x, v##i##N, v##i##C, v##i##H, v##i##W), t_);      \
        _Pragma("unroll") for (int j = 0; j < V; ++j) s[j] += k##i * t_[j];                \
    } while (0)

// This frame's input to the accumulator a of V channels from c on (in_mode ADD or
// ASSIGN, see above: a holds its value or 0), from s = Σ_i k_i · δ_i.
#define TRUNC_SUM_ARGS scale, scale_stride, shift
// c is a multiple of V, so for V ≥ 4 the per-channel fp32 vectors (torch allocations,
// 16-byte aligned) load 4 channels at a time.
template <int V>
__device__ __forceinline__ void add_input(int c, const float (&s)[V], const float *scale,
                                          int scale_stride, const float *shift, float (&a)[V]) {
    constexpr int Q = V % 4 ? 1 : 4;
#pragma unroll
    for (int h = 0; h < V; h += Q) {
        float k[Q], b[Q];
        if (scale && scale_stride) {
            load_vec<Q>(scale + c + h, k);
        } else {
#pragma unroll
            for (int j = 0; j < Q; ++j) k[j] = scale ? scale[0] : 1.f;
        }
        if (shift) {
            load_vec<Q>(shift + c + h, b);
        } else {
#pragma unroll
            for (int j = 0; j < Q; ++j) b[j] = 0.f;
        }
#pragma unroll
        for (int j = 0; j < Q; ++j)
            a[h + j] += round_s((scale ? s[h + j] * round_s(k[j]) : s[h + j]) + b[j]);
    }
}

// The shared memory of a pw_truncate block (one for all its instantiations).
struct TruncateShared {
    int list[DC_BLOCK];
    int emits[DC_BLOCK];  // the block's emitted pixels (span ≤ DC_BLOCK)
    int n_emits;
};

// One window of a pw_truncate block: the `span` candidates from `base` on — list
// entries [base, base + span) below `listed` with in_list, else pixels [base, base + span)
// scanned from the operand masks. It counts the window's emitted pixels and appends them
// to out_list. Every thread of the block calls it; it may be called again for another
// window (the shared memory is reused).
// FN: the function as a compile-time code (an ACT_* activation), or -1 for the `fn`
// argument (products, layer norms and the rarer activations). MARK: mark the `targets`
// convs' outputs (without it `targets` is not read, and the code is as before targets
// existed: marking costs registers).
template <int V, int FN, bool MARK>
__device__ __forceinline__ void truncate_window(TruncateShared &sm, int base, int listed, TRUNC_PARAMS) {
    if (FN >= 0) fn = FN;  // every branch on fn below folds
    int *list = sm.list, *emits = sm.emits;
    int &n_emits = sm.n_emits;
    __syncthreads();  // the previous window is done with the shared memory
    if (threadIdx.x == 0) n_emits = 0;  // ordered before any use by block_list's barriers
    int flags, tag, origin;  // origin + (tag >> 2): the pixel of a block_list entry
    if (in_list) {
        // The candidates are the listed pixels; the host zeroed om and passes one
        // operand (n_ops == 1).
        const int entry = base + (int)threadIdx.x;
        flags = (int)threadIdx.x < span && entry < listed;
        tag = flags ? (in_list[entry] << 2) | 1 : 0;
        origin = 0;
    } else {
        const ScanPixel sp = scan_pixel(N * H * W, span, base);
        flags = operand_flags(sp, H, W, n_ops, DC_MASK_ARGS(0), DC_MASK_ARGS(1));
        if (sp.valid && !flags) om[sp.pixel] = 0;
        tag = ((int)threadIdx.x << 2) | flags;
        origin = sp.base;
    }
    const int count = block_list(flags != 0, tag, list);
    if (cand_counter && threadIdx.x == 0 && count) atomicAdd(cand_counter, count);
    int emitted = 0;  // pixels this thread's group emitted (counted by lane 0)
    const int step = V * lanes;  // channels one pass of the group covers
    // Every group runs every round (spare groups with cand = false) for the reductions.
    for (int r0 = 0; r0 < count; r0 += DC_BLOCK / lanes) {
        const ListPixel p = list_pixel(list, count, r0, lanes, origin, H, W);
        const bool cand = p.cand, act0 = p.flags & 1, act1 = p.flags & 2;
        const int sub = p.sub, n = p.at.n, y = p.at.y, x = p.at.x;
        float *a0p = a0 + off4(n, 0, y, x, a0N, a0C, a0H, a0W);  // the pixel's channel 0
        if (in_mode != TRUNC_IN_ACCUMULATED && cand) {
#pragma unroll 2
            for (int c = V * sub; c < C; c += step) {
                float s[V] = {}, t[V];
                if (act0) TRUNC_ADD_OPERAND(0, s);
                if (act1) TRUNC_ADD_OPERAND(1, s);
                if (in_mode == TRUNC_IN_ASSIGN) {
#pragma unroll
                    for (int j = 0; j < V; ++j) t[j] = 0.f;
                } else {
                    load_vec<V>(a0p + c * a0C, t);
                }
                add_input<V>(c, s, TRUNC_SUM_ARGS, t);
                store_vec<V>(a0p + c * a0C, t);
            }
        }
        // Per-pixel statistics of the layer norm (two passes over the channels, fp32).
        float mean = 0.f, rstd = 0.f;
        if (fn == FN_LAYER_NORM) {
            float s = 0.f, q = 0.f, t[V];
            for (int c = V * sub; c < C; c += step) {
                if (!cand) break;
                load_vec<V>(a0p + c * a0C, t);
#pragma unroll
                for (int j = 0; j < V; ++j) s += round_s(t[j]);
            }
            mean = group_sum(s, lanes) / C;
            for (int c = V * sub; c < C; c += step) {
                if (!cand) break;
                load_vec<V>(a0p + c * a0C, t);
#pragma unroll
                for (int j = 0; j < V; ++j) q += (round_s(t[j]) - mean) * (round_s(t[j]) - mean);
            }
            rstd = rsqrtf(group_sum(q, lanes) / C + p0);
        }
        // v at channels c..c+V-1 (p0 is eps for the layer norm, else the activation's parameter).
        auto values = [&](int c, float (&v)[V]) {
            load_vec<V>(a0p + c * a0C, v);
            float b[V];
            if (fn == FN_PRODUCT) load_vec<V>(a1 + off4(n, c, y, x, a1N, a1C, a1H, a1W), b);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float x0 = round_s(v[j]);
                float u;
                if (fn == FN_PRODUCT) {
                    u = x0 * round_s(b[j]);
                } else if (fn == FN_LAYER_NORM) {
                    u = (x0 - mean) * rstd;
                    if (norm_w) u *= norm_w[c + j];
                    if (norm_b) u += norm_b[c + j];
                } else {
                    u = activate(fn, x0, p0, p1);
                }
                v[j] = round_s(u);
            }
        };
        // The peak pass keeps the thread's values v and sent values in registers, a chunk
        // of TRUNC_REGS · lanes channels at a time; the emit pass reuses them when the
        // pixel is one chunk (C ≤ 2048 with the host's lanes), else recomputes each chunk.
        constexpr int SLOTS = TRUNC_REGS / V;
        const int chunk = TRUNC_REGS * lanes;
        float v[SLOTS][V] = {}, sent[SLOTS][V] = {};
        auto load_chunk = [&](int c0) {
#pragma unroll
            for (int i = 0; i < SLOTS; ++i) {
                const int c = c0 + V * sub + i * step;
                if (cand && c < C) {
                    values(c, v[i]);
                    load_vec<V>(o + off4(n, c, y, x, sN, sC, sH, sW), sent[i]);
                }
            }
        };
        float peak = 0.f;
        for (int c0 = 0; c0 < C; c0 += chunk) {
            load_chunk(c0);
#pragma unroll
            for (int i = 0; i < SLOTS; ++i)
                if (cand && c0 + V * sub + i * step < C)
#pragma unroll
                    for (int j = 0; j < V; ++j) peak = fmaxf(peak, fabsf(v[i][j] - sent[i][j]));
        }
        peak = group_max(peak, lanes);
        const bool emit = cand && peak > thr;
        if (cand && sub == 0) {
            om[p.pixel] = emit;
            emitted += emit;
            if (emit && (out_list || MARK)) emits[atomicAdd_block(&n_emits, 1)] = p.pixel;
        }
        if (!emit) continue;
        for (int c0 = 0; c0 < C; c0 += chunk) {
            if (C > chunk) load_chunk(c0);
#pragma unroll
            for (int i = 0; i < SLOTS; ++i) {
                const int c = c0 + V * sub + i * step;
                if (c < C) {
                    float dy[V];
#pragma unroll
                    for (int j = 0; j < V; ++j) dy[j] = v[i][j] - sent[i][j];
                    store_vec<V>(o + off4(n, c, y, x, sN, sC, sH, sW), v[i]);  // exact: v is rounded
                    if (out) store_vec<V>(out + off4(n, c, y, x, oN, oC, oH, oW), dy);
                }
            }
        }
    }
    block_count(emitted, counter);
    __syncthreads();  // every emitted pixel is in emits
    list_append(emits, n_emits, 0, 0, out_list, out_count);
    if constexpr (MARK) mark_conv_outputs(targets, emits, n_emits, H, W);
}

// Over a whole map, flat NHWC tensors: the operands, o, out and a0 (where read or
// written) hold element (pixel p, channel c) at p·C + c (the host checks; see
// whole_width in pointwise.py), so a round of `span` pixels is one run of span·C
// elements. The block's threads lie flat over it in channel vectors of V (C a multiple
// of V, every tensor V-element aligned): consecutive threads read consecutive vectors,
// as a copy does, with no list, scan loop or coordinates. By INPUT, the in_mode (a
// kernel for each, so that no case's registers constrain another's):
//   ASSIGN, every pixel a candidate (its operands are whole values under full
//   masks: a dense layer, backends/cuda/dense_layers.py); a0 may be null (a dense layer
//   that leaves its accumulator to be restored when the delta kernels take over,
//   DenseLayerPlan);
//   ACCUMULATED (a conv's epilogue added this frame's input into a0) or ADD of one
//   operand (a0 += round(s[c] · k0 · δ0), a0 stored; a dense delta's,
//   backends/cuda/conv.py): masked, the candidates the pixels set in operand 0's mask,
//   (N, 1, H, W) contiguous, so the mask byte of pixel p is m0[p]; a vector of a pixel
//   that is not one reads nothing.
// A thread holds TRUNC_WHOLE_ITEMS vectors — of each operand, packed as stored, or of
// a0 — and of o, from its loads (all issued before any arithmetic) to its stores, and
// finds each vector's pixel and channel once: span · C / V ≤ TRUNC_WHOLE_ITEMS ·
// DC_BLOCK and span ≤ DC_BLOCK (the host's span). Blocks take rounds blockIdx.x,
// blockIdx.x + gridDim.x, … . Every pixel's mask byte is written (0 where it is not
// emitted), after the round's reads of m0, which may be the same mask. With `clean`, out
// is written at every element, 0 where the pixel is not emitted (a *clean* delta: zero
// outside its mask, which a dense delta downstream reads as it is, backends/cuda/conv.py).
template <int V, int FN, bool MARK, int INPUT>
__device__ __forceinline__ void truncate_whole(TruncateShared &sm, TRUNC_PARAMS, int clean) {
    constexpr bool MASKED = INPUT != TRUNC_IN_ASSIGN;
    if (FN >= 0) fn = FN;  // every branch on fn below folds
    const int pixels = N * H * W;
    int *peaks = sm.list;  // the round's pixels: whether one of their vectors exceeds thr
    int emitted = 0, candidates = 0;
    for (int base = blockIdx.x * span; base < pixels; base += gridDim.x * span) {
        const int round_pixels = min(span, pixels - base), items = round_pixels * C / V;
        const int first = base * C;  // the round's first element
        __syncthreads();  // the previous round is done with the shared memory
        if ((int)threadIdx.x < round_pixels) peaks[threadIdx.x] = 0;
        if (threadIdx.x == 0) sm.n_emits = 0;
        __syncthreads();
        // Item k of this thread: elements e[k] .. e[k] + V − 1 (from the map's start), of
        // the round's pixel local[k] (−1 past the round's items, or not a candidate),
        // from channel e − first − local·C on. Operands and sent values stay packed as
        // stored until the arithmetic; then x[k] holds v = f(a), rounded and so stored
        // exactly.
        int e[TRUNC_WHOLE_ITEMS], local[TRUNC_WHOLE_ITEMS];
        Packed<V> x[TRUNC_WHOLE_ITEMS], y[TRUNC_WHOLE_ITEMS], sent[TRUNC_WHOLE_ITEMS];
        float acc[MASKED ? TRUNC_WHOLE_ITEMS : 1][V];
#pragma unroll
        for (int k = 0; k < TRUNC_WHOLE_ITEMS; ++k) {
            const int i = (int)threadIdx.x + k * DC_BLOCK;
            e[k] = first + i * V;
            local[k] = i < items ? i * V / C : -1;
            if (MASKED && local[k] >= 0 && !m0[base + local[k]]) local[k] = -1;
            if (local[k] < 0) continue;
            if constexpr (INPUT == TRUNC_IN_ADD) {
                load_packed<V>(v0 + e[k], x[k]);  // a0 is read where it is added to
            } else if constexpr (MASKED) {
                load_vec<V>(a0 + e[k], acc[k]);
            } else {
                load_packed<V>(v0 + e[k], x[k]);
                if (n_ops > 1) load_packed<V>(v1 + e[k], y[k]);
            }
            load_packed<V>(o + e[k], sent[k]);
        }
#pragma unroll
        for (int k = 0; k < TRUNC_WHOLE_ITEMS; ++k) {
            if (local[k] < 0) continue;
            float t[V] = {};  // a, rounded to the model dtype
            if constexpr (MASKED) {
                if constexpr (INPUT == TRUNC_IN_ADD) {
                    load_vec<V>(a0 + e[k], acc[k]);
                    float s[V];
#pragma unroll
                    for (int j = 0; j < V; ++j) s[j] = k0 * x[k].get(j);
                    add_input<V>(e[k] - first - local[k] * C, s, TRUNC_SUM_ARGS, acc[k]);
                    store_vec<V>(a0 + e[k], acc[k]);
                }
#pragma unroll
                for (int j = 0; j < V; ++j) t[j] = round_s(acc[k][j]);
            } else {
                float s[V];
#pragma unroll
                for (int j = 0; j < V; ++j)
                    s[j] = k0 * x[k].get(j) + (n_ops > 1 ? k1 * y[k].get(j) : 0.f);
                add_input<V>(e[k] - first - local[k] * C, s, TRUNC_SUM_ARGS, t);  // t = 0 + round_s(…)
                if (a0) store_vec<V>(a0 + e[k], t);
            }
            float peak = 0.f;
#pragma unroll
            for (int j = 0; j < V; j += 2) {
                const float f0 = round_s(activate(fn, t[j], p0, p1));
                const float f1 = j + 1 < V ? round_s(activate(fn, t[j + 1], p0, p1)) : 0.f;
                peak = fmaxf(peak, fabsf(f0 - sent[k].get(j)));
                if (j + 1 < V) peak = fmaxf(peak, fabsf(f1 - sent[k].get(j + 1)));
                x[k].set(j, f0, f1);
            }
            if (peak > thr) peaks[local[k]] = 1;
        }
        const bool pixel_here = (int)threadIdx.x < round_pixels;
        const int pixel = base + (int)threadIdx.x;
        if (pixel_here) candidates += MASKED ? m0[pixel] != 0 : 1;
        __syncthreads();  // every vector's peak is in, every read of m0 done
#pragma unroll
        for (int k = 0; k < TRUNC_WHOLE_ITEMS; ++k) {
            if (local[k] < 0 || !peaks[local[k]]) {
                if (clean && out && e[k] - first < items * V) {
                    const float zero[V] = {};
                    store_vec<V>(out + e[k], zero);
                }
                continue;
            }
            float dy[V];
#pragma unroll
            for (int j = 0; j < V; ++j) dy[j] = x[k].get(j) - sent[k].get(j);
            store_packed<V>(o + e[k], x[k]);
            if (out) store_vec<V>(out + e[k], dy);
        }
        if (pixel_here) {
            const int emit = peaks[threadIdx.x] != 0;
            om[pixel] = emit;
            emitted += emit;
            if (emit && (out_list || MARK)) sm.emits[atomicAdd_block(&sm.n_emits, 1)] = pixel;
        }
        __syncthreads();  // every emitted pixel is in emits
        list_append(sm.emits, sm.n_emits, 0, 0, out_list, out_count);
        if constexpr (MARK) mark_conv_outputs(targets, sm.emits, sm.n_emits, H, W);
    }
    block_count(emitted, counter);
    block_count(candidates, cand_counter);
}

// The three cases of truncate_whole, as PATHs of TRUNC_BY_FUNCTION below.
template <int V, int FN, bool MARK>
__device__ __forceinline__ void truncate_assigned(TruncateShared &sm, TRUNC_PARAMS, int clean) {
    truncate_whole<V, FN, MARK, TRUNC_IN_ASSIGN>(sm, TRUNC_ARGS, clean);
}
template <int V, int FN, bool MARK>
__device__ __forceinline__ void truncate_masked(TruncateShared &sm, TRUNC_PARAMS, int clean) {
    truncate_whole<V, FN, MARK, TRUNC_IN_ACCUMULATED>(sm, TRUNC_ARGS, clean);
}
template <int V, int FN, bool MARK>
__device__ __forceinline__ void truncate_added(TruncateShared &sm, TRUNC_PARAMS, int clean) {
    truncate_whole<V, FN, MARK, TRUNC_IN_ADD>(sm, TRUNC_ARGS, clean);
}

// A pw_truncate block: over a list (in_list), a persistent grid whose blocks take
// windows blockIdx.x, blockIdx.x + gridDim.x, … of the listed candidates (the host
// launches at most one wave, see truncate() in backends/cuda/pointwise.py), so an empty
// list costs one wave of blocks that read the count; else its one window of the frame.
// Its output is never clean (it visits candidates only): `clean` is 0.
template <int V, int FN, bool MARK>
__device__ __forceinline__ void truncate_pixels(TruncateShared &sm, TRUNC_PARAMS, int clean) {
    const int first = blockIdx.x * span;
    const int end = in_list ? *in_count : first + 1;  // a scanning block: one window
    for (int base = first; base < end; base += gridDim.x * span)
        truncate_window<V, FN, MARK>(sm, base, end, TRUNC_ARGS);
}

// In fp16 (the models the engine is tuned for) the activations of common CNNs (ReLU,
// ReLU6 = hardtanh, hardswish, SiLU) get their own code, where the per-element function
// is known at compile time; any other function, and fp32, run the general one. PATH:
// truncate_pixels, truncate_assigned, truncate_masked or truncate_added. Returns from the
// kernel.
#define TRUNC_BY_FUNCTION(PATH, V, MARK)                                                    \
    do {                                                                                   \
        if constexpr (sizeof(scalar_t) == 2) {                                             \
            switch (fn) {                                                                  \
            case ACT_RELU: PATH<V, ACT_RELU, MARK>(sm, TRUNC_ARGS, clean); return;         \
            case ACT_HARDTANH: PATH<V, ACT_HARDTANH, MARK>(sm, TRUNC_ARGS, clean); return; \
            case ACT_HARDSWISH: PATH<V, ACT_HARDSWISH, MARK>(sm, TRUNC_ARGS, clean); return; \
            case ACT_SILU: PATH<V, ACT_SILU, MARK>(sm, TRUNC_ARGS, clean); return;         \
            default: break;                                                                \
            }                                                                              \
        }                                                                                  \
        PATH<V, -1, MARK>(sm, TRUNC_ARGS, clean);                                          \
        return;                                                                            \
    } while (0)
// ... and by the channels of one vector, `vec`, as the host chose them (truncate() in
// backends/cuda/pointwise.py): 1 or 4, and 8 where WIDE (truncate_whole: one 16-byte
// load in fp16); never 1 where MARK (the marking kernels run over vectors only).
#define TRUNC_BY_VECTOR_AND_FUNCTION(PATH, WIDE, MARK)                                      \
    do {                                                                                   \
        if constexpr (WIDE)                                                                \
            if (vec == 8) TRUNC_BY_FUNCTION(PATH, 8, MARK);                                \
        if (vec == 4 || MARK) TRUNC_BY_FUNCTION(PATH, 4, MARK);                            \
        if constexpr (!MARK) TRUNC_BY_FUNCTION(PATH, 1, MARK);                             \
    } while (0)

extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) pw_truncate(TRUNC_PARAMS, int vec) {
    DC_GRID_START();
    __shared__ TruncateShared sm;
    constexpr int clean = 0;
    TRUNC_BY_VECTOR_AND_FUNCTION(truncate_pixels, false, false);
}

// pw_truncate over a whole map (truncate_whole), assigning, accumulated (masked) or adding
// (added): kernels of their own, so that no path's registers constrain another's.
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) pw_truncate_whole(TRUNC_PARAMS,
                                                                                      int vec, int clean) {
    DC_GRID_START();
    __shared__ TruncateShared sm;
    TRUNC_BY_VECTOR_AND_FUNCTION(truncate_assigned, true, false);
}

extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) pw_truncate_whole_masked(TRUNC_PARAMS,
                                                                                             int vec, int clean) {
    DC_GRID_START();
    __shared__ TruncateShared sm;
    TRUNC_BY_VECTOR_AND_FUNCTION(truncate_masked, true, false);
}

extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) pw_truncate_whole_added(TRUNC_PARAMS,
                                                                                            int vec, int clean) {
    DC_GRID_START();
    __shared__ TruncateShared sm;
    TRUNC_BY_VECTOR_AND_FUNCTION(truncate_added, true, false);
}

// The two paths marking their target convs' outputs (mark_conv_outputs in common.cuh):
// kernels of their own, so that the others keep their registers, and only over channel
// vectors (the host marks only where vectors of 4 or more fit), which halves what they
// add to this file's compilation.
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) pw_truncate_marking(TRUNC_PARAMS, int vec) {
    DC_GRID_START();
    __shared__ TruncateShared sm;
    constexpr int clean = 0;
    TRUNC_BY_VECTOR_AND_FUNCTION(truncate_pixels, false, true);
}

extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) pw_truncate_whole_marking(TRUNC_PARAMS,
                                                                                              int vec, int clean) {
    DC_GRID_START();
    __shared__ TruncateShared sm;
    TRUNC_BY_VECTOR_AND_FUNCTION(truncate_assigned, true, true);
}

// A dense restart's activation (backends/cuda/pointwise.py, Truncating.dense_in_place):
// the state of a first frame written in place from one read of the input,
//   a ← x (fp32),  o ← f(x) (rounded to scalar_t),
// over `count` elements that x, a and o lay out alike (the same strides, no gaps), so
// the element index is the offset. `vec`: groups of 4 (count a multiple of 4, 16-byte
// aligned a and 8-byte aligned x and o).
template <int V>
__device__ __forceinline__ void restart_elements(int count, int code, float p0, float p1,
                                                 const scalar_t *x, float *a, scalar_t *o) {
    const int stride = gridDim.x * blockDim.x * V;
    for (int i = (blockIdx.x * blockDim.x + threadIdx.x) * V; i < count; i += stride) {
        float v[V], f[V];
        load_vec<V>(x + i, v);
#pragma unroll
        for (int k = 0; k < V; ++k) f[k] = activate(code, v[k], p0, p1);
        store_vec<V>(a + i, v);
        store_vec<V>(o + i, f);
    }
}

extern "C" __global__ void pw_restart(int count, int code, float p0, float p1, const scalar_t *x,
                                      float *a, scalar_t *o, int vec) {
    DC_GRID_START();
    if (vec)
        restart_elements<4>(count, code, p0, p1, x, a, o);
    else
        restart_elements<1>(count, code, p0, p1, x, a, o);
}
