// Delta convolution: δy = conv(δx) without bias, on the output pixels whose input
// footprint (kernel extent, dilation, zero padding, stride) touches an updated pixel.
//
// Each block owns an 8×8 tile of output pixels of one sample. It stages the input mask
// under the tile's footprint in shared memory (TileMask), then computes the tile's output
// mask from it; a tile with no updated pixel writes its mask bytes and leaves without
// reading values or weights. Inside an active tile, inactive output pixels read no input
// values either.
//
// Two kernels share that structure (a third, conv_output_list, only writes the mask of a
// LIST_TILE × LIST_TILE tile and lists its active pixels, for the listed GEMM below):
//   conv_gemm       implicit GEMM for any group size: output pixels × output channels of
//                   one group, reduced over K = KH·KW·Cin_g (a 1×1 conv is a plain
//                   matrix product over the channels). Weights packed [G][KH][KW][Cin_g][Cout_g].
//                   fp32 models use CUDA cores, summing runs of FLUSH_K products in
//                   fp32 and the runs in fp64 (see conv_gemm_cuda_cores); fp16 models
//                   use tensor cores (wmma 16×16×16, fp16 products, fp32 accumulation).
//   conv_depthwise  one input channel per group (Cin_g = 1, any channel multiplier);
//                   weights packed [KH][KW][Cout].
// conv_gemm_listed is conv_gemm's fp16 GEMM with rows taken from a list of output pixels
// instead of a tile: its cost follows the candidates, not the tiles they touch;
// conv_gemm_listed_parts also splits K into as many parts as the frame's count leaves
// blocks for, and conv_listed_sum adds the parts (see conv_gemm_listed_tc).
// conv_gemm_gathered[_parts] is the same listed GEMM on 128-row tiles with mma.sync, for
// the convs whose reduction chunks each lie in one kernel tap (see conv_gemm_gathered_tc).
// Split K of the tiled GEMM (conv_gemm_split, the same GEMM with SPLIT set): blockIdx.z =
// split · N + n and split s reduces its own range of K (a multiple of FLUSH_K long) into
// the fp32 workspace ws[s][n][oy][ox][c]; conv_split_sum then adds the splits in order
// and applies the epilogue. Splitting gives low-resolution layers with long K (ResNet's
// last stages) more blocks than SMs; depthwise convs are never split.
// `mode` bits: CONV_ACCUMULATE — the epilogue adds round(δy) into an fp32 accumulator
// (the state of a following activation, which then truncates: see pw_truncate) instead
// of writing δy in the model dtype; CONV_VECTOR_A / CONV_VECTOR_B — conv_gemm may load
// its input / weight tiles as 16-byte vectors (the host sets them only when channels are
// contiguous, counts are multiples of the chunk and vector, and addresses aligned).
#include <cuda_pipeline.h>
#include <mma.h>
#include <type_traits>

#include "common.cuh"

// TILE, GEMM_CO, DW_CO and the CONV_* mode bits come from backends/cuda/constants.py.
#define TILE_P (TILE * TILE)  // pixels per tile
static_assert(TILE_P == 64 && DC_BLOCK == 256, "the convolution kernels map 256 threads onto 8 × 8 tiles");
static_assert(LISTED_TAPS <= 64, "a listed GEMM row keeps its taps as the bits of one 64-bit word");
#define GEMM_K 16        // reduction chunk
#define FLUSH_K 64       // fp32 run length of the CUDA-core path's two-level sum
#define DW_WINDOW 361    // input pixels a conv_depthwise block stages (19 × 19: 5×5 at stride 2)
// Kernel taps whose weights a conv_depthwise block stages: 5 × 5, or 3 × 3 in fp32 (what
// fits beside the fp32 window in 48 KB); larger kernels read their weights from memory.
constexpr int DW_TAPS = sizeof(scalar_t) == 2 ? 25 : 9;
#define TC_K 32          // reduction chunk of the tensor-core path
#define TC_LDA (TC_K + 8)        // padded leading dimensions (multiples of 8 halves / 4 floats)
#define TC_LDB (GEMM_CO + 8)
#define TC_LDC (GEMM_CO + 4)
#define FOOT_MAX 2048    // input-mask bytes a tile may stage in shared memory (TileMask)

#define CONV_PARAMS                                                                        \
    int N, int Cin, int H, int W, int Cout, int OH, int OW, int KH, int KW, int sh, int sw, \
        int pt, int pl, int dh, int dw, int groups,                                         \
        const scalar_t *x, int xN, int xC, int xH, int xW,                                  \
        const mask_t *m, int mN, int mH, int mW, const scalar_t *wp, int mode,              \
        scalar_t *out, int oN, int oC, int oH, int oW,                                      \
        float *acc, int aN, int aC, int aH, int aW, mask_t *om, int splits, float *ws, int *counter,   \
        int *out_list, int *out_count

#define CONV_ARGS                                                                           \
    N, Cin, H, W, Cout, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups, x, xN, xC, xH, xW, m,  \
        mN, mH, mW, wp, mode, out, oN, oC, oH, oW, acc, aN, aC, aH, aW, om, splits, ws, counter,  \
        out_list, out_count

// The input mask as one tile reads it. The tile's output pixels read the input window of
// rows × cols pixels from (y0, x0); when that window fits its buffer the block stages
// its mask in shared memory once (`foot`, 0 outside the frame), so the output-mask test
// and every gather read shared memory instead of issuing a dependent global load before
// each value load. Larger windows (large dilations) read the global mask.
struct TileMask {
    const mask_t *m;
    int mN, mH, mW, H, W;
    int n, ty0, tx0;  // sample, first output row and column of the tile
    int y0, x0, cols;
    bool staged;
    const mask_t *foot;

    // Whether input pixel (iy, ix) of the sample is updated (false outside the frame).
    __device__ __forceinline__ bool operator()(int iy, int ix) const {
        if (iy < 0 || iy >= H || ix < 0 || ix >= W) return false;
        return (staged ? foot[(iy - y0) * cols + (ix - x0)] : m[off3(n, iy, ix, mN, mH, mW)]) != 0;
    }
    // The gathers' form (see gather_a): kernel tap r of an output pixel reads (iy, ix).
    __device__ __forceinline__ bool operator()(int, int iy, int ix) const { return (*this)(iy, ix); }
};

// This block's split of K and sample: blockIdx.z = split · N + n (split 0 unless SPLIT).
struct ConvSlice {
    int split, n;
};
template <bool SPLIT>
__device__ __forceinline__ ConvSlice conv_slice(int N) {
    ConvSlice c;
    c.split = SPLIT ? blockIdx.z / N : 0;
    c.n = blockIdx.z - c.split * N;
    return c;
}

// This block's SIDE × SIDE tile (blockIdx.x, sample n), its input mask staged in `foot`
// when it fits its FOOT bytes. All threads of the block must call it.
template <int FOOT, int SIDE = TILE>
__device__ __forceinline__ TileMask tile_mask(int n, int OW, int H, int W, int KH, int KW, int sh, int sw, int pt,
                                              int pl, int dh, int dw, const mask_t *m, int mN, int mH, int mW,
                                              mask_t *foot) {
    const int tiles_x = (OW + SIDE - 1) / SIDE;
    TileMask t;
    t.m = m;
    t.mN = mN;
    t.mH = mH;
    t.mW = mW;
    t.H = H;
    t.W = W;
    t.n = n;
    t.ty0 = (blockIdx.x / tiles_x) * SIDE;
    t.tx0 = (blockIdx.x % tiles_x) * SIDE;
    t.y0 = t.ty0 * sh - pt;
    t.x0 = t.tx0 * sw - pl;
    const int rows = (SIDE - 1) * sh + (KH - 1) * dh + 1;
    t.cols = (SIDE - 1) * sw + (KW - 1) * dw + 1;
    t.staged = rows * t.cols <= FOOT;
    t.foot = foot;
    if (t.staged) {
        for (int i = threadIdx.x; i < rows * t.cols; i += blockDim.x) {
            const int r = i / t.cols, iy = t.y0 + r, ix = t.x0 + (i - r * t.cols);
            foot[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? m[off3(t.n, iy, ix, mN, mH, mW)] : 0;
        }
        __syncthreads();
    }
    return t;
}

// Output mask of the SIDE × SIDE tile into `active` (also written to `om`, and its active
// pixels added to `counter` if not null, by the blocks of the first output-channel block
// and split). Returns whether any pixel of the tile is active.
// All threads of the block must call it.
template <int SIDE = TILE>
__device__ __forceinline__ bool tile_output_mask(const TileMask &t, int OH, int OW, int KH, int KW, int sh, int sw,
                                                 int pt, int pl, int dh, int dw, mask_t *om, int *counter,
                                                 bool *active) {
    static_assert(SIDE * SIDE <= DC_BLOCK, "a thread per pixel of the tile");
    const int p = threadIdx.x;
    bool act = false;
    if (p < SIDE * SIDE) {
        const int oy = t.ty0 + p / SIDE, ox = t.tx0 + p % SIDE;
        if (oy < OH && ox < OW) {
            for (int kh = 0; kh < KH && !act; ++kh)
                for (int kw = 0; kw < KW && !act; ++kw)
                    act = t(oy * sh - pt + kh * dh, ox * sw - pl + kw * dw);
            if (blockIdx.y == 0 && blockIdx.z == t.n) om[(t.n * OH + oy) * OW + ox] = act;
        }
        active[p] = act;
    }
    const int count = __syncthreads_count(act);
    if (counter && threadIdx.x == 0 && count && blockIdx.y == 0 && blockIdx.z == t.n) atomicAdd(counter, count);
    return count != 0;
}

// The SIDE × SIDE tile's active pixels appended to the pixel list out_list (if not null;
// see list_append in common.cuh) by the block that wrote the tile's mask. The GEMM
// kernels call it after their epilogue, when its registers no longer add to theirs.
// All threads of the block must call it.
template <int SIDE = TILE>
__device__ __forceinline__ void list_tile(const TileMask &t, int OH, int OW, const bool *active, int *out_list,
                                          int *out_count) {
    __shared__ int listed[SIDE * SIDE];
    if (out_list == nullptr || blockIdx.y != 0 || blockIdx.z != t.n) return;  // the same for the whole block
    const int p = threadIdx.x;
    const int pixel = (t.n * OH + t.ty0 + p / SIDE) * OW + t.tx0 + p % SIDE;
    list_append(listed, block_list(p < SIDE * SIDE && active[p], pixel, listed), 0, 0, out_list, out_count);
}

// One output element of a conv: sample n, channel c, pixel (y, x).
struct OutputAt {
    int n, c, y, x;
};

// Where a conv's outputs go: δy in the model dtype into `out`, or with CONV_ACCUMULATE
// a += round(δy) into the fp32 accumulator `acc` of the activation that follows.
// A thread stores its R outputs in two steps, load() and then store(), for the set bits
// of `on`, output i at `at(i)` (an OutputAt): load() reads every accumulator value
// before store() writes the first one. A load-add-store loop would serialise R round
// trips to memory, because neither the compiler nor the hardware may move a load past a
// store that might alias it; two steps put all R loads in flight together, and let a
// kernel issue them early, overlapping the loads of its inputs.
struct ConvOut {
    int mode;
    scalar_t *out;
    int oN, oC, oH, oW;
    float *acc;
    int aN, aC, aH, aW;

    template <int R, typename At>
    __device__ __forceinline__ void load(unsigned on, At at, float (&prev)[R]) const {
#pragma unroll
        for (int i = 0; i < R; ++i) {
            prev[i] = 0.f;
            if ((mode & CONV_ACCUMULATE) && ((on >> i) & 1)) {
                const OutputAt o = at(i);
                prev[i] = acc[off4(o.n, o.c, o.y, o.x, aN, aC, aH, aW)];
            }
        }
    }
    template <int R, typename At>
    __device__ __forceinline__ void store(unsigned on, At at, const float (&v)[R], const float (&prev)[R]) const {
#pragma unroll
        for (int i = 0; i < R; ++i) {
            if (!((on >> i) & 1)) continue;
            const OutputAt o = at(i);
            if (mode & CONV_ACCUMULATE)
                acc[off4(o.n, o.c, o.y, o.x, aN, aC, aH, aW)] = prev[i] + round_s(v[i]);
            else
                out[off4(o.n, o.c, o.y, o.x, oN, oC, oH, oW)] = from_f<scalar_t>(v[i]);
        }
    }
    // load() then store(), for a kernel with nothing to overlap with the loads.
    template <int R, typename At>
    __device__ __forceinline__ void put(unsigned on, At at, const float (&v)[R]) const {
        float prev[R];
        load(on, at, prev);
        store(on, at, v, prev);
    }
};
#define CONV_OUT ConvOut{mode, out, oN, oC, oH, oW, acc, aN, aC, aH, aW}

// The block's place in the GEMM: its group, first output channel in that group, and its
// part [k_begin, k_end) of the reduction (all of K unless SPLIT).
struct GemmBlock {
    int cin_g, cout_g, grp, co0, K, k_begin, k_end;
};
template <bool SPLIT>
__device__ __forceinline__ GemmBlock gemm_block(int Cin, int Cout, int groups, int KH, int KW,
                                                int splits, int split) {
    GemmBlock b;
    b.cin_g = Cin / groups;
    b.cout_g = Cout / groups;
    const int blocks_per_group = (b.cout_g + GEMM_CO - 1) / GEMM_CO;
    b.grp = blockIdx.y / blocks_per_group;
    b.co0 = (blockIdx.y - b.grp * blocks_per_group) * GEMM_CO;
    b.K = KH * KW * b.cin_g;
    if (SPLIT) {
        const int per_split = (b.K + splits * FLUSH_K - 1) / (splits * FLUSH_K) * FLUSH_K;
        b.k_begin = min(b.K, split * per_split);
        b.k_end = min(b.K, b.k_begin + per_split);
    } else {
        b.k_begin = 0;
        b.k_end = b.K;
    }
    return b;
}

// The epilogue of R outputs of a conv_gemm thread (see ConvOut): its split's partial
// sums into the workspace ws[split][n][oy][ox][c] (SPLIT), or `sink`.
template <bool SPLIT, int R, typename At>
__device__ __forceinline__ void gemm_store(unsigned on, At at, const float (&v)[R], const ConvOut &sink, int split,
                                           float *ws, int N, int OH, int OW, int Cout) {
    if (SPLIT) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
            if (!((on >> i) & 1)) continue;
            const OutputAt o = at(i);
            ws[(((size_t)split * N + o.n) * OH + o.y) * OW * Cout + (size_t)o.x * Cout + o.c] = v[i];
        }
    } else {
        sink.put(on, at, v);
    }
}

// One element of the implicit-GEMM A matrix: the input value under reduction index kg
// for the output pixel of sample n whose window starts at (y0, x0), or 0 (padding,
// masked, k ≥ K). `taps(r, iy, ix)`: whether kernel tap r (= kh·KW + kw), which reads
// input pixel (iy, ix), reads an updated pixel inside the frame (a TileMask, or the
// RowTaps of a listed row).
template <typename Taps>
__device__ __forceinline__ scalar_t gather_a(int kg, int K, int cin_g, int KW, bool pixel_active, int n,
                                             int y0, int x0, int dh, int dw, const Taps &taps,
                                             const scalar_t *xg, int xN, int xC, int xH, int xW) {
    if (kg >= K || !pixel_active) return from_f<scalar_t>(0.f);
    const int r = kg / cin_g;
    const int ci = kg - r * cin_g;
    const int kh = r / KW;
    const int iy = y0 + kh * dh, ix = x0 + (r - kh * KW) * dw;
    if (!taps(r, iy, ix)) return from_f<scalar_t>(0.f);
    return xg[off4(n, ci, iy, ix, xN, xC, xH, xW)];
}

// Where one thread's A vector of successive reduction chunks lies: its reduction index
// k (k0 + the thread's channel offset c) is channel ci of kernel tap r = kh·KW + kw,
// which reads input pixel (iy, ix) = (y0 + kh·dh, x0 + kw·dw) of the row's window at
// (y0, x0); r ≥ KH·KW where k ≥ K. start() divides; step() moves on by a chunk (TC_K)
// without a division — a block visits its chunks in order — so a long reduction (a 3×3
// conv over 512 channels: 144 chunks) costs no integer division per chunk.
struct TapCursor {
    int ci, r, kw, iy, ix;
    __device__ __forceinline__ void start(int k, int cin_g, int KW, int y0, int x0, int dh, int dw) {
        r = k / cin_g;
        ci = k - r * cin_g;
        const int kh = r / KW;
        kw = r - kh * KW;
        iy = y0 + kh * dh;
        ix = x0 + kw * dw;
    }
    __device__ __forceinline__ void step(int cin_g, int KW, int dh, int dw) {
        ci += TC_K;
        while (ci >= cin_g) {  // at most ceil(TC_K / cin_g) taps on
            ci -= cin_g;
            ++r;
            ix += dw;
            if (++kw == KW) {
                kw = 0;
                ix -= KW * dw;
                iy += dh;
            }
        }
    }
};

// The address of an A-tile row segment: the vector of reduction indices [k, k + width)
// (4 floats or 8 halves) at cursor `at` for the pixel of sample n, or null where it is
// zero (inactive pixel, k ≥ K, i.e. tap r ≥ R = KH·KW, or tap not updated). With
// CONV_VECTOR_A, Cin_g is a multiple of the width, so a vector lies in one kernel tap and
// its channels are contiguous; vectors at k ≥ K (the end of a short reduction, e.g. a
// 1×1 conv over 16 or 24 channels) are zero.
template <typename Taps>
__device__ __forceinline__ const scalar_t *a_vector_at(const TapCursor &at, int R, bool pixel_active, int n,
                                                       const Taps &taps, const scalar_t *xg, int xN, int xH,
                                                       int xW) {
    if (!pixel_active || at.r >= R || !taps(at.r, at.iy, at.ix)) return nullptr;
    return xg + n * xN + at.iy * xH + at.ix * xW + at.ci;
}
// ... at reduction index k0 + c of the window at (y0, x0) (one chunk, no cursor kept).
template <typename Taps>
__device__ __forceinline__ const scalar_t *a_vector_at(int k0, int K, int cin_g, int KW, bool pixel_active, int n,
                                                       int y0, int x0, int dh, int dw, const Taps &taps, int c,
                                                       const scalar_t *xg, int xN, int xH, int xW) {
    if (!pixel_active || k0 + c >= K) return nullptr;
    TapCursor at;
    at.start(k0 + c, cin_g, KW, y0, x0, dh, dw);
    return a_vector_at(at, K / cin_g, pixel_active, n, taps, xg, xN, xH, xW);
}

// The vector a_vector_at addresses, loaded (zero where it is null).
template <typename V, typename Taps>
__device__ __forceinline__ V gather_a_vector(int k0, int K, int cin_g, int KW, bool pixel_active, int n,
                                             int y0, int x0, int dh, int dw, const Taps &taps, int c,
                                             const scalar_t *xg, int xN, int xH, int xW) {
    V v;
    memset(&v, 0, sizeof(V));
    const scalar_t *at = a_vector_at(k0, K, cin_g, KW, pixel_active, n, y0, x0, dh, dw, taps, c, xg, xN, xH, xW);
    return at ? *reinterpret_cast<const V *>(at) : v;
}

// Both GEMM paths keep the next reduction chunk's A and B elements in registers: they are
// loaded before the current chunk is multiplied, so the loads' latency overlaps the
// arithmetic instead of preceding it (one shared-memory stage, one chunk in flight).

// CUDA-core implicit GEMM (fp32 models): 4×4 outputs per thread.
//
// Two-level sum: each output sums runs of FLUSH_K products in fp32 registers and adds
// each run's sum into an fp64 total in shared memory (the thread's own slots, so no
// synchronisation). A delta conv's rounding error is not transient like a dense conv's:
// the next layer accumulates it, frame after frame, so a sequential fp32 sum over a
// large K (up to 18432) would drift like √frames. The rounding error of the two-level
// sum is that of a FLUSH_K-term fp32 sum; it costs one fp64 add per output per run.
template <bool SPLIT>
__device__ __forceinline__ void conv_gemm_cuda_cores(CONV_PARAMS) {
    __shared__ bool active[TILE_P];
    __shared__ mask_t foot[FOOT_MAX];
    __shared__ float As[TILE_P][GEMM_K + 1];
    __shared__ __align__(16) float Bs[GEMM_K][GEMM_CO];
    __shared__ double total[16][256];  // [4·i + j][thread]: fp64 sums of the runs

    const int tid = threadIdx.x;
    const ConvSlice slice = conv_slice<SPLIT>(N);
    const TileMask t = tile_mask<FOOT_MAX>(slice.n, OW, H, W, KH, KW, sh, sw, pt, pl, dh, dw, m, mN, mH, mW, foot);
    if (!tile_output_mask(t, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, om, counter, active)) return;

    const GemmBlock gb = gemm_block<SPLIT>(Cin, Cout, groups, KH, KW, splits, slice.split);
    const int cin_g = gb.cin_g, cout_g = gb.cout_g, grp = gb.grp, co0 = gb.co0, K = gb.K;

    // Scalar A loads: this thread fills reduction row kk for pixels (tid/16) + 16·i, i.e.
    // tile rows (tid/16)/8 + 2·i of column (tid/16)%8; bit i of `pok`: that pixel is active.
    const int kk = tid & (GEMM_K - 1);
    const int sx = (t.tx0 + (tid >> 4) % TILE) * sw - pl, sy = (t.ty0 + (tid >> 4) / TILE) * sh - pt;
    unsigned pok = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) pok |= (unsigned)active[(tid >> 4) + 16 * i] << i;
    // Compute mapping: pixels 4·ty..4·ty+3, output channels 4·tx..4·tx+3.
    const int tx = tid & 15, ty = tid >> 4;
    float sum[4][4] = {};  // the current run
#pragma unroll
    for (int o = 0; o < 16; ++o) total[o][tid] = 0.0;
    const scalar_t *xg = x + grp * cin_g * xC;
    const scalar_t *wg = wp + (size_t)grp * K * cout_g;

    // Vector loads: pixel tid/4 takes channels 4·(tid%4)..+3 of the chunk; weight row
    // vb = tid/16 takes output channels 4·(tid%16)..+3 (also the scalar B mapping).
    const int vp = tid >> 2;
    const bool vok = active[vp];
    const int vy = (t.ty0 + vp / TILE) * sh - pt, vx = (t.tx0 + vp % TILE) * sw - pl;
    const int vb = tid >> 4, vco = co0 + 4 * (tid & 15);
    float a_next[4], b_next[4];
    auto load = [&](int k0) {
        if (mode & CONV_VECTOR_A) {
            const float4 a = gather_a_vector<float4>(k0, K, cin_g, KW, vok, t.n, vy, vx, dh, dw, t, 4 * (tid & 3),
                                                     reinterpret_cast<const scalar_t *>(xg), xN, xH, xW);
            a_next[0] = to_f(a.x);
            a_next[1] = to_f(a.y);
            a_next[2] = to_f(a.z);
            a_next[3] = to_f(a.w);
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
                a_next[i] = to_f(gather_a(k0 + kk, K, cin_g, KW, (pok >> i) & 1, t.n, sy + 2 * i * sh, sx, dh, dw,
                                          t, xg, xN, xC, xH, xW));
        }
        const int kgb = k0 + vb;
        if ((mode & CONV_VECTOR_B) && kgb < K && vco + 4 <= cout_g) {
            const float4 b = *reinterpret_cast<const float4 *>(wg + (size_t)kgb * cout_g + vco);
            b_next[0] = b.x;
            b_next[1] = b.y;
            b_next[2] = b.z;
            b_next[3] = b.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                b_next[j] = (kgb < K && vco + j < cout_g) ? to_f(wg[(size_t)kgb * cout_g + vco + j]) : 0.f;
        }
    };
    if (!SPLIT || gb.k_begin < gb.k_end) load(gb.k_begin);  // an empty split stores zeros
    for (int k0 = gb.k_begin; k0 < gb.k_end; k0 += GEMM_K) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (mode & CONV_VECTOR_A)
                As[vp][4 * (tid & 3) + i] = a_next[i];
            else
                As[(tid >> 4) + 16 * i][kk] = a_next[i];
        }
        *reinterpret_cast<float4 *>(&Bs[vb][4 * (tid & 15)]) =
            make_float4(b_next[0], b_next[1], b_next[2], b_next[3]);
        __syncthreads();
        if (k0 + GEMM_K < gb.k_end) load(k0 + GEMM_K);
#pragma unroll
        for (int k = 0; k < GEMM_K; ++k) {
            const float4 b = *reinterpret_cast<const float4 *>(&Bs[k][tx * 4]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float a = As[ty * 4 + i][k];
                sum[i][0] += a * b.x;
                sum[i][1] += a * b.y;
                sum[i][2] += a * b.z;
                sum[i][3] += a * b.w;
            }
        }
        if ((k0 + GEMM_K) % FLUSH_K == 0 || k0 + GEMM_K >= gb.k_end) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    total[4 * i + j][tid] += sum[i][j];
                    sum[i][j] = 0.f;
                }
        }
        __syncthreads();
    }
    // Output 4·i + j: pixel ty·4 + i, channel co0 + 4·tx + j.
    unsigned on = 0;
    float v[16];
#pragma unroll
    for (int o = 0; o < 16; ++o) {
        on |= (unsigned)(active[ty * 4 + o / 4] && co0 + tx * 4 + o % 4 < cout_g) << o;
        v[o] = (float)total[o][tid];
    }
    auto at = [&](int o) {
        const int p = ty * 4 + o / 4;
        return OutputAt{t.n, grp * cout_g + co0 + tx * 4 + o % 4, t.ty0 + p / TILE, t.tx0 + p % TILE};
    };
    gemm_store<SPLIT>(on, at, v, CONV_OUT, slice.split, ws, N, OH, OW, Cout);
    list_tile(t, OH, OW, active, out_list, out_count);
}

// Tensor-core implicit GEMM (fp16 models). 8 warps: 4 along the pixels × 2 along the
// output channels, each computing 16 pixels × 32 channels with two 16×16 fragments.
//
// tc_gemm is the GEMM of one block's 64 rows (output pixels) × 64 output channels over
// its part of K, and its epilogue; the row sources call it:
//   conv_gemm_tensor_cores  rows = the 8×8 tile of blockIdx.x (any conv configuration);
//   conv_gemm_listed        rows = 64 consecutive entries of a pixel work list of
//                           output pixels (see conv_gemm_listed_tc).
// The row source describes its A elements two ways (`TcRows`): `fetch(k0)` loads the
// block's A elements of the reduction chunk starting at k0 into the caller's registers
// and `stage(As)` writes them to a stage; `source(k0)` is the address of this thread's
// 16-byte A vector of that chunk (row tid / 4, channels 8·(tid % 4)..+7; null: zero),
// for rows of 16-byte vectors (CONV_VECTOR_A), called for the chunks k_begin, k_begin +
// TC_K, … in order (the row sources step a TapCursor). `row_at(p)` is row p's output pixel,
// computed where active[p].
//
// With 16-byte A and B vectors (CONV_VECTOR_A and CONV_VECTOR_B) the chunks flow through
// a TC_STAGES-deep cp.async pipeline: while one chunk is multiplied, the next
// TC_STAGES - 1 are in flight (zero-filled where the source is null), so a block's time
// per chunk is its copies' throughput rather than one gather's latency — which is what
// bounds a block over few rows and a long K (a listed 3×3 conv at 10 % candidates runs
// ~100 blocks of 18 chunks). Otherwise one chunk is loaded into registers while the
// previous is multiplied.
// cp.async copies of 16 bytes (zero-filled where `on` is false: src is then not read), and
// their groups: one group per chunk of a pipeline.
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool on) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(on ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// A STAGES-deep cp.async pipeline over the reduction chunks k0 = k_begin, k_begin + CHUNK,
// … < k_end, in order: issue(stage, k0) starts chunk k0's copies into `stage` (they may be
// none), multiply(stage) consumes a stage whose copies every thread has completed. While
// one chunk is multiplied the next STAGES - 1 are in flight; a stage is reissued only
// after every thread has multiplied it. On return every copy has landed and every thread
// is past its last multiply, so the stages' memory may be reused.
template <int STAGES, int CHUNK, typename Issue, typename Multiply>
__device__ __forceinline__ void cp_async_pipeline(int k_begin, int k_end, Issue issue, Multiply multiply) {
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        const int k0 = k_begin + st * CHUNK;
        if (k0 < k_end) issue(st, k0);
        cp_async_commit();  // possibly empty: one group per chunk keeps the count uniform
    }
    int stage = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += CHUNK) {
        cp_async_wait<STAGES - 2>();  // this chunk's copies are done (this thread's)
        __syncthreads();              // ... every thread's; the oldest stage is free
        const int next = k0 + (STAGES - 1) * CHUNK;
        if (next < k_end) issue((stage + STAGES - 1) % STAGES, next);
        cp_async_commit();
        multiply(stage);
        stage = (stage + 1) % STAGES;
    }
    cp_async_wait<0>();
    __syncthreads();
}

#define TC_STAGES 3
struct RowCoord {
    int n, oy, ox;
};

// The shared memory of tc_gemm: the staged chunks, and the fp32 results of the epilogue
// in the same bytes (written after the last chunk is multiplied).
template <typename T>
union TcShared {
    struct {
        T As[TC_STAGES][TILE_P][TC_LDA];
        T Bs[TC_STAGES][TC_K][TC_LDB];
    } chunk;
    float Cs[TILE_P][TC_LDC];
};

template <typename Fetch, typename Stage, typename Source, typename RowAt>
struct TcRows {
    Fetch fetch;
    Stage stage;
    Source source;
    RowAt row_at;
};
template <typename Fetch, typename Stage, typename Source, typename RowAt>
__device__ __forceinline__ TcRows<Fetch, Stage, Source, RowAt> tc_rows(Fetch f, Stage st, Source so, RowAt r) {
    return TcRows<Fetch, Stage, Source, RowAt>{f, st, so, r};
}

// c += As × Bs over one chunk (this warp's 16 rows × 32 channels).
template <typename T, typename Frag>
__device__ __forceinline__ void tc_chunk(const T (*As)[TC_LDA], const T (*Bs)[TC_LDB], Frag (&c)[2]) {
    using namespace nvcuda;
    const int warp = threadIdx.x >> 5, warp_m = warp & 3, warp_n = warp >> 2;
#pragma unroll
    for (int ks = 0; ks < TC_K; ks += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, &As[warp_m * 16][ks], TC_LDA);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
            wmma::load_matrix_sync(b, &Bs[ks][warp_n * 32 + j * 16], TC_LDB);
            wmma::mma_sync(c[j], a, b, c[j]);
        }
    }
}

// The block's 64 × 64 outputs go to `store(on, at, v)` (as gemm_store: thread tid holds
// output i = row (tid / 64) + 4·i, channel co0 + tid % 64, for i < 16; bit i of `on` is
// set where that output exists, at(i) is its OutputAt).
template <typename T, typename Rows, typename Store>
__device__ __forceinline__ void tc_gemm(const GemmBlock &gb, TcShared<T> &s, const bool *active, const Rows &rows,
                                        const T *wg, int mode, Store store) {
    using namespace nvcuda;
    const int tid = threadIdx.x;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2];
    wmma::fill_fragment(c[0], 0.f);
    wmma::fill_fragment(c[1], 0.f);

    // B loads: weight row vb = tid/8 takes output channels 8·(tid%8)..+7.
    const int vb = tid >> 3, vco = gb.co0 + 8 * (tid & 7);
    const bool vector_b = (mode & CONV_VECTOR_B) && vco + 8 <= gb.cout_g;
    if ((mode & CONV_VECTOR_A) && (mode & CONV_VECTOR_B)) {
        // cp.async pipeline. With CONV_VECTOR_B, Cout_g is a multiple of 8, so this
        // thread's weight vector lies wholly inside the group's channels or wholly past
        // them (zero-filled, as are rows past K).
        auto issue = [&](int stage, int k0) {
            const T *a = rows.source(k0);
            __pipeline_memcpy_async(&s.chunk.As[stage][tid >> 2][8 * (tid & 3)], a ? a : wg, 16, a ? 0 : 16);
            const int kgb = k0 + vb;
            const bool b_on = vector_b && kgb < gb.K;
            __pipeline_memcpy_async(&s.chunk.Bs[stage][vb][8 * (tid & 7)],
                                    b_on ? wg + (size_t)kgb * gb.cout_g + vco : wg, 16, b_on ? 0 : 16);
        };
        // (On return every chunk is multiplied, so Cs may overwrite them.)
        cp_async_pipeline<TC_STAGES, TC_K>(gb.k_begin, gb.k_end, issue,
                                           [&](int stage) { tc_chunk(s.chunk.As[stage], s.chunk.Bs[stage], c); });
    } else {
        uint4 b_vec;
        T b_next[8];
        auto fetch_b = [&](int k0) {
            const int kgb = k0 + vb;
            if (vector_b) {
                b_vec = kgb < gb.K ? *reinterpret_cast<const uint4 *>(wg + (size_t)kgb * gb.cout_g + vco)
                                   : make_uint4(0, 0, 0, 0);
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    b_next[j] = (kgb < gb.K && vco + j < gb.cout_g) ? wg[(size_t)kgb * gb.cout_g + vco + j]
                                                                     : from_f<T>(0.f);
            }
        };
        // An empty split (k_begin = K) fetches zeros here, multiplies nothing and stores zeros.
        rows.fetch(gb.k_begin);
        fetch_b(gb.k_begin);
        for (int k0 = gb.k_begin; k0 < gb.k_end; k0 += TC_K) {
            rows.stage(s.chunk.As[0]);
            if (vector_b) {
                *reinterpret_cast<uint4 *>(&s.chunk.Bs[0][vb][8 * (tid & 7)]) = b_vec;
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) s.chunk.Bs[0][vb][8 * (tid & 7) + j] = b_next[j];
            }
            __syncthreads();
            if (k0 + TC_K < gb.k_end) {
                rows.fetch(k0 + TC_K);
                fetch_b(k0 + TC_K);
            }
            tc_chunk(s.chunk.As[0], s.chunk.Bs[0], c);
            __syncthreads();
        }
    }
    const int warp = tid >> 5, warp_m = warp & 3, warp_n = warp >> 2;
#pragma unroll
    for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&s.Cs[warp_m * 16][warp_n * 32 + j * 16], c[j], TC_LDC, wmma::mem_row_major);
    __syncthreads();
    // Output i: row (tid / 64) + 4·i, channel co0 + tid % 64.
    const int co = tid & 63, p0 = tid >> 6;
    unsigned on = 0;
    float v[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        on |= (unsigned)(active[p0 + 4 * i] && gb.co0 + co < gb.cout_g) << i;
        v[i] = s.Cs[p0 + 4 * i][co];
    }
    auto at = [&](int i) {
        const RowCoord r = rows.row_at(p0 + 4 * i);
        return OutputAt{r.n, gb.grp * gb.cout_g + gb.co0 + co, r.oy, r.ox};
    };
    store(on, at, v);
}

template <typename T, bool SPLIT>
__device__ __forceinline__ void conv_gemm_tensor_cores(CONV_PARAMS) {
    __shared__ bool active[TILE_P];
    __shared__ mask_t foot[FOOT_MAX];
    __shared__ __align__(32) TcShared<T> smem;

    const int tid = threadIdx.x;
    const ConvSlice slice = conv_slice<SPLIT>(N);
    const TileMask t = tile_mask<FOOT_MAX>(slice.n, OW, H, W, KH, KW, sh, sw, pt, pl, dh, dw, m, mN, mH, mW, foot);
    if (!tile_output_mask(t, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, om, counter, active)) return;
    const GemmBlock gb = gemm_block<SPLIT>(Cin, Cout, groups, KH, KW, splits, slice.split);
    const T *xg = x + gb.grp * gb.cin_g * xC;

    // Scalar A loads: reduction column kk for pixels (tid / 32) + 8·i, i.e. tile row i of
    // column tid / 32; bit i of `pok`: that pixel is active.
    const int kk = tid & (TC_K - 1);
    const int sx = (t.tx0 + (tid >> 5)) * sw - pl, sy = t.ty0 * sh - pt;
    unsigned pok = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) pok |= (unsigned)active[(tid >> 5) + 8 * i] << i;
    // Vector loads: pixel tid/4 takes channels 8·(tid%4)..+7 of the chunk.
    const int vp = tid >> 2;
    const bool vok = active[vp];
    const int vy = (t.ty0 + vp / TILE) * sh - pt, vx = (t.tx0 + vp % TILE) * sw - pl;
    uint4 a_vec;
    T a_next[8];
    TapCursor at;
    auto source = [&](int k0) {  // k0: gb.k_begin, then on by TC_K
        if (k0 == gb.k_begin)
            at.start(k0 + 8 * (tid & 3), gb.cin_g, KW, vy, vx, dh, dw);
        else
            at.step(gb.cin_g, KW, dh, dw);
        return a_vector_at(at, KH * KW, vok, t.n, t, xg, xN, xH, xW);
    };
    auto fetch = [&](int k0) {
        if (mode & CONV_VECTOR_A) {
            a_vec = gather_a_vector<uint4>(k0, gb.K, gb.cin_g, KW, vok, t.n, vy, vx, dh, dw, t, 8 * (tid & 3),
                                           xg, xN, xH, xW);
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i)
                a_next[i] = gather_a(k0 + kk, gb.K, gb.cin_g, KW, (pok >> i) & 1, t.n, sy + i * sh, sx, dh, dw,
                                     t, xg, xN, xC, xH, xW);
        }
    };
    auto stage = [&](T (*As)[TC_LDA]) {
        if (mode & CONV_VECTOR_A) {
            *reinterpret_cast<uint4 *>(&As[vp][8 * (tid & 3)]) = a_vec;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) As[(tid >> 5) + 8 * i][kk] = a_next[i];
        }
    };
    auto row_at = [&](int p) { return RowCoord{t.n, t.ty0 + p / TILE, t.tx0 + p % TILE}; };
    auto store = [&](unsigned on, auto at, const float(&v)[16]) {
        gemm_store<SPLIT>(on, at, v, CONV_OUT, slice.split, ws, N, OH, OW, Cout);
    };
    tc_gemm<T>(gb, smem, active, tc_rows(fetch, stage, source, row_at), wp + (size_t)gb.grp * gb.K * gb.cout_g,
               mode, store);
    list_tile(t, OH, OW, active, out_list, out_count);
}

// The input taps of a listed GEMM row: bit r (r = kh·KW + kw < LISTED_TAPS) of `bits`
// is set iff tap r of the row's output pixel reads an updated input pixel inside the
// frame (computed once per row tile by listed_row_taps).
struct RowTaps {
    unsigned long long bits;
    __device__ __forceinline__ bool operator()(int r, int, int) const { return (bits >> r) & 1ull; }
};

// taps[p] |= the RowTaps bits of listed row p (its output pixel rows[p], active[p]) for
// the ROWS rows of a row tile: the 256 threads take row tid % ROWS and every
// (256 / ROWS)-th tap from tid / ROWS, so a 3×3 kernel costs each thread at most three
// (ROWS = 64) or five (ROWS = 128) mask loads. taps[] must be zero; all threads must
// call it, and synchronise before reading taps[].
template <int ROWS>
__device__ __forceinline__ void listed_row_taps(const RowCoord *rows, const bool *active, unsigned long long *taps,
                                                int H, int W, int KH, int KW, int sh, int sw, int pt, int pl,
                                                int dh, int dw, const mask_t *m, int mN, int mH, int mW) {
    static_assert(DC_BLOCK % ROWS == 0, "whole threads per row");
    const int p = threadIdx.x % ROWS;
    if (!active[p]) return;
    const RowCoord q = rows[p];
    const int y0 = q.oy * sh - pt, x0 = q.ox * sw - pl;
    unsigned long long bits = 0ull;
    for (int r = threadIdx.x / ROWS; r < KH * KW; r += DC_BLOCK / ROWS) {
        const int kh = r / KW, iy = y0 + kh * dh, ix = x0 + (r - kh * KW) * dw;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W && m[off3(q.n, iy, ix, mN, mH, mW)]) bits |= 1ull << r;
    }
    if (bits) atomicOr(&taps[p], bits);
}

// How many parts a listed GEMM with row tiles of `tile_rows` rows splits its reduction
// into this frame: as many as its grid of `blocks` blocks per output-channel block can
// give each (row tile, part) pair one block, at most `zmax` (the host's bound from K), at
// least 1. Every block of the GEMM and conv_listed_sum compute it from the same count,
// so they agree without a launch.
__device__ __forceinline__ int listed_parts(int zmax, int blocks, int listed, int tile_rows) {
    const int row_tiles = (listed + tile_rows - 1) / tile_rows;
    return row_tiles ? max(1, min(zmax, blocks / row_tiles)) : 1;
}

// A listed GEMM block's place in its persistent grid (see conv_gemm_listed_tc), for row
// tiles of `tile_rows` rows: the frame's number of parts, this block's part and row-tile
// slot, the number of slots, and its GemmBlock; `pixelwise`: a 1×1 conv at stride 1
// without padding, whose row reads one input pixel, its own, which is updated (a listed
// row is a candidate), so its one tap is on without a mask read. Counts the list into
// `counter` (statistics) once per launch.
struct ListedBlock {
    bool pixelwise;
    int parts, part, slot, slots;
    GemmBlock gb;
};
template <bool PARTS>
__device__ __forceinline__ ListedBlock listed_block(int Cin, int Cout, int groups, int KH, int KW, int sh, int sw,
                                                    int pt, int pl, int splits, int *counter, int listed,
                                                    int tile_rows) {
    ListedBlock lb;
    lb.pixelwise = KH == 1 && KW == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0;
    // (Without PARTS: one part, slots = gridDim.x, so that no register holds them.)
    const int blocks = gridDim.x * gridDim.z, b = blockIdx.x + gridDim.x * blockIdx.z;
    lb.parts = PARTS ? listed_parts(splits, blocks, listed, tile_rows) : 1;
    lb.part = PARTS ? b % lb.parts : 0;
    lb.slot = PARTS ? b / lb.parts : blockIdx.x;
    lb.slots = PARTS ? blocks / lb.parts : gridDim.x;
    if (counter && threadIdx.x == 0 && b == 0 && blockIdx.y == 0 && listed) atomicAdd(counter, listed);
    lb.gb = gemm_block<PARTS>(Cin, Cout, groups, KH, KW, lb.parts, lb.part);
    return lb;
}

// The ROWS rows of the row tile at list entry r0 into shared memory: row p's output pixel
// rows[p], whether it exists (active[p]: r0 + p < listed) and its taps (RowTaps bits; see
// listed_row_taps). All threads must call it; it synchronises before it returns.
template <int ROWS>
__device__ __forceinline__ void listed_tile_rows(const int *list, int listed, int r0, bool pixelwise,
                                                 RowCoord *rows, bool *active, unsigned long long *taps, int OH,
                                                 int OW, int H, int W, int KH, int KW, int sh, int sw, int pt,
                                                 int pl, int dh, int dw, const mask_t *m, int mN, int mH, int mW) {
    const int tid = threadIdx.x;
    if (tid < ROWS) {
        const bool on = r0 + tid < listed;
        const Pixel q = pixel_at(on ? list[r0 + tid] : 0, OH, OW);
        rows[tid] = RowCoord{q.n, q.y, q.x};
        active[tid] = on;
        taps[tid] = pixelwise && on;
    }
    __syncthreads();
    if (!pixelwise) {
        listed_row_taps<ROWS>(rows, active, taps, H, W, KH, KW, sh, sw, pt, pl, dh, dw, m, mN, mH, mW);
        __syncthreads();
    }
}

// conv_gemm over a pixel work list (see "Pixel work lists" in common.cuh): the rows of
// the GEMM are the listed output pixels list[0:*count), 64 per row tile, so a block's
// rows are all candidates however scattered they are, and no block scans the mask. Any
// geometry with at most LISTED_TAPS kernel taps, fp16 (tensor cores). The list is the
// output mask's: a 1×1, stride-1, unpadded conv's is its input's (handed on by the
// producer), any other's by the truncation that produced its input (mark_conv_outputs in
// common.cuh) or by conv_output_list. A persistent grid (gridDim.x
// row-tile slots × output-channel blocks × gridDim.z) loops over the row tiles; an empty
// list costs each block one load. `counter` (statistics) gets *count once.
//
// PARTS (conv_gemm_listed_parts, grid z = zmax = `splits`): the frame's count decides
// how many parts of K the blocks split into (listed_parts): block b = blockIdx.x +
// gridDim.x · blockIdx.z takes part b % parts of the row tiles b / parts, b / parts +
// slots, … (slots = gridDim.x · zmax / parts; with more than one part each slot holds at
// most one row tile). Every part stores its fp32 sums by list row into ws[part][row][c]
// (row < slots · 64 where parts > 1, < the list's capacity where parts = 1), which
// conv_listed_sum adds in part order and stores: one store path, without a branch on the
// part count, keeps the kernel's registers near the lean one's. Without PARTS
// (conv_gemm_listed) the blocks store their outputs themselves: the host runs it where
// K cannot split (zmax < 2).
template <typename T, bool PARTS>
__device__ __forceinline__ void conv_gemm_listed_tc(CONV_PARAMS, const int *list, const int *count) {
    __shared__ bool active[TILE_P];
    __shared__ RowCoord rows[TILE_P];
    __shared__ unsigned long long taps[TILE_P];
    __shared__ __align__(32) TcShared<T> smem;

    const int tid = threadIdx.x, listed = *count;
    const ListedBlock lb = listed_block<PARTS>(Cin, Cout, groups, KH, KW, sh, sw, pt, pl, splits, counter, listed,
                                               TILE_P);
    const GemmBlock &gb = lb.gb;
    const int part = lb.part, slot = lb.slot, slots = lb.slots;
    const T *xg = x + gb.grp * gb.cin_g * xC;
    // Vector loads: row vp = tid/4 takes channels 8·(tid%4)..+7 of the chunk; its input
    // window starts at (vy, vx). Scalar loads: column kk of rows tid/32 + 8·i.
    const int vp = tid >> 2, kk = tid & (TC_K - 1);
    int vn = 0, vy = 0, vx = 0;
    RowTaps vt{0ull};
    uint4 a_vec;  // the chunk's A elements: one vector, or eight scalars (fewer live registers)
    T *const a_next = reinterpret_cast<T *>(&a_vec);
    TapCursor at;
    auto source = [&](int k0) {  // k0: gb.k_begin, then on by TC_K (each row tile)
        if (k0 == gb.k_begin)
            at.start(k0 + 8 * (tid & 3), gb.cin_g, KW, vy, vx, dh, dw);
        else
            at.step(gb.cin_g, KW, dh, dw);
        return a_vector_at(at, KH * KW, active[vp], vn, vt, xg, xN, xH, xW);
    };
    auto fetch = [&](int k0) {
        if (mode & CONV_VECTOR_A) {
            a_vec = gather_a_vector<uint4>(k0, gb.K, gb.cin_g, KW, active[vp], vn, vy, vx, dh, dw, vt,
                                           8 * (tid & 3), xg, xN, xH, xW);
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int p = (tid >> 5) + 8 * i;
                const RowCoord q = rows[p];
                a_next[i] = gather_a(k0 + kk, gb.K, gb.cin_g, KW, active[p], q.n, q.oy * sh - pt, q.ox * sw - pl,
                                     dh, dw, RowTaps{taps[p]}, xg, xN, xC, xH, xW);
            }
        }
    };
    auto stage = [&](T (*As)[TC_LDA]) {
        if (mode & CONV_VECTOR_A) {
            *reinterpret_cast<uint4 *>(&As[vp][8 * (tid & 3)]) = a_vec;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) As[(tid >> 5) + 8 * i][kk] = a_next[i];
        }
    };
    auto row_at = [&](int p) { return rows[p]; };
    for (int r0 = slot * TILE_P; (!PARTS || slot < slots) && r0 < listed; r0 += slots * TILE_P) {
        listed_tile_rows<TILE_P>(list, listed, r0, lb.pixelwise, rows, active, taps, OH, OW, H, W, KH, KW, sh, sw,
                                 pt, pl, dh, dw, m, mN, mH, mW);
        vn = rows[vp].n;
        vy = rows[vp].oy * sh - pt;
        vx = rows[vp].ox * sw - pl;
        vt = RowTaps{taps[vp]};
        auto store = [&](unsigned on, auto at, const float(&v)[16]) {
            if (PARTS) {
                float *wr = ws + ((size_t)part * slots * TILE_P + r0 + (tid >> 6)) * Cout;
#pragma unroll
                for (int i = 0; i < 16; ++i)
                    if ((on >> i) & 1) wr[(size_t)4 * i * Cout + at(i).c] = v[i];
            } else {
                CONV_OUT.put(on, at, v);
            }
        };
        tc_gemm<T>(gb, smem, active, tc_rows(fetch, stage, source, row_at), wp + (size_t)gb.grp * gb.K * gb.cout_g,
                   mode, store);
        __syncthreads();  // the next tile's rows overwrite rows, active and taps
    }
}

template <bool SPLIT>
__device__ __forceinline__ void conv_gemm_any(CONV_PARAMS) {
    if constexpr (std::is_same<scalar_t, __half>::value)
        conv_gemm_tensor_cores<scalar_t, SPLIT>(CONV_ARGS);
    else
        conv_gemm_cuda_cores<SPLIT>(CONV_ARGS);
}

// blockDim 256; grid (tiles, groups · ceil(Cout_g / 64), N) for conv_gemm and
// (tiles, groups · ceil(Cout_g / 64), splits · N) for conv_gemm_split (split K: the
// partial sums go to ws; the unsplit kernel ignores `splits` and `ws`).
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) conv_gemm(CONV_PARAMS) {
    DC_GRID_START();
    conv_gemm_any<false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) conv_gemm_split(CONV_PARAMS) {
    DC_GRID_START();
    conv_gemm_any<true>(CONV_ARGS);
}

// grid (row-tile slots, groups · ceil(Cout_g / 64), zmax) (conv_gemm_listed: zmax = 1);
// fp16 only (the host never launches them for fp32 models, whose GEMM runs on CUDA cores
// over tiles).
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) conv_gemm_listed(CONV_PARAMS, const int *list,
                                                                       const int *count) {
    DC_GRID_START();
    if constexpr (std::is_same<scalar_t, __half>::value) conv_gemm_listed_tc<scalar_t, false>(CONV_ARGS, list, count);
}
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) conv_gemm_listed_parts(CONV_PARAMS, const int *list,
                                                                             const int *count) {
    DC_GRID_START();
    if constexpr (std::is_same<scalar_t, __half>::value) conv_gemm_listed_tc<scalar_t, true>(CONV_ARGS, list, count);
}

// Gathered implicit GEMM: conv_gemm_listed's GEMM at tensor-core efficiency, for the
// convs whose reduction chunks each lie in one kernel tap — a single tap (1×1, any
// stride), or Cin_g a multiple of GATHER_K — with 16-byte A and B vectors (CONV_VECTOR_A
// and CONV_VECTOR_B), fp16. Rows: GATHER_ROWS listed output pixels per row tile; columns:
// GEMM_CO output channels; 8 warps as 4 × 2, each 32 rows × 32 channels (2 × 4 tiles of
// mma.sync m16n8k16, fp16 products, fp32 sums), fed by ldmatrix from a GATHER_STAGES-deep
// cp.async pipeline of GATHER_K-long chunks.
//
// What makes it cheap per chunk: chunk k0 is channels [c0, c0 + GATHER_K) of tap t (both
// the same for every row, advanced by a block-uniform cursor without division), so a
// row's A vector is at x + the row's window origin + tap offset + 8·v, valid iff bit t of
// the row's taps (in the frame and updated, listed_row_taps) and c0 + 8·v < Cin_g (a 1×1
// conv's last chunk may run past K: zero-filled). Each row's origin and taps are
// computed once per row tile. Where it is applicable, the host runs it in place of
// conv_gemm_listed (the lists, parts, counter and outputs are the same; see
// conv_gemm_listed_tc), with GATHER_ROWS-row tiles.
//
// Invariants: a listed row is an output pixel of the list; every chunk of [k_begin,
// k_end) is multiplied exactly once, in order, so a row's sum is the same whatever the
// number of rows listed beside it; rows past the count, and channels past Cout_g, are
// computed as zeros and never stored.
#define GATHER_LDA (GATHER_K + 8)  // padded rows: ldmatrix reads 8 rows without bank conflicts
#define GATHER_LDB (GEMM_CO + 8)
#define GATHER_LDC (GEMM_CO + 4)
static_assert(GATHER_ROWS == 128 && GEMM_CO == 64 && GATHER_K == 32 && DC_BLOCK == 256,
              "8 warps of 32 × 32 outputs; 2 A vectors and 1 B vector per thread per chunk");

union GatherShared {
    struct {
        __half A[GATHER_STAGES][GATHER_ROWS][GATHER_LDA];
        __half B[GATHER_STAGES][GATHER_K][GATHER_LDB];
    } chunk;
    float C[GATHER_ROWS][GATHER_LDC];  // the epilogue's sums, after the last chunk
};

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const __half *p, bool trans) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// c += a × b for one m16n8k16 tile (a: 4 registers of the row-major A fragment, b: 2 of
// the column-major B fragment).
__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The block-uniform place of reduction chunk k0: channel c0 of tap t = (kh, kw), whose
// input pixel lies `offset` elements from a row's window origin. step() moves on by
// GATHER_K (into the next tap where the chunk ends one: Cin_g is then a multiple of
// GATHER_K, or there is one tap and the chunks end with K).
struct ChunkCursor {
    int t, c0, kh, kw, offset;
    __device__ __forceinline__ void start(int k, int cin_g, int KW, int dh, int dw, int xH, int xW) {
        t = k / cin_g;
        c0 = k - t * cin_g;
        kh = t / KW;
        kw = t - kh * KW;
        offset = kh * dh * xH + kw * dw * xW + c0;
    }
    __device__ __forceinline__ void step(int cin_g, int KW, int dh, int dw, int xH, int xW) {
        c0 += GATHER_K;
        // c0 = Cin_g exactly where Cin_g is a multiple of GATHER_K; past it only after a
        // one-tap conv's last chunk, which no chunk follows.
        if (c0 >= cin_g) {
            c0 = 0;
            ++t;
            if (++kw == KW) {
                kw = 0;
                ++kh;
            }
        }
        offset = kh * dh * xH + kw * dw * xW + c0;
    }
};

template <bool PARTS>
__device__ __forceinline__ void conv_gemm_gathered_tc(CONV_PARAMS, const int *list, const int *count) {
    __shared__ bool active[GATHER_ROWS];
    __shared__ RowCoord rows[GATHER_ROWS];
    __shared__ unsigned long long taps[GATHER_ROWS];
    __shared__ __align__(128) GatherShared s;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp & 3, warp_n = warp >> 2;
    const int listed = *count;
    const ListedBlock lb = listed_block<PARTS>(Cin, Cout, groups, KH, KW, sh, sw, pt, pl, splits, counter, listed,
                                               GATHER_ROWS);
    const GemmBlock &gb = lb.gb;
    const int part = lb.part, slot = lb.slot, slots = lb.slots;
    const __half *xg = x + gb.grp * gb.cin_g * xC;
    const __half *wg = wp + (size_t)gb.grp * gb.K * gb.cout_g;
    // This thread's copies: A vector v = tid % 4 of rows tid / 4 and tid / 4 + 64; B vector
    // tid % 8 of chunk row tid / 8.
    const int av = tid & 3, ar = tid >> 2, bk = tid >> 3, bc = gb.co0 + 8 * (tid & 7);
    const bool b_cols = bc + 8 <= gb.cout_g;

    for (int r0 = slot * GATHER_ROWS; (!PARTS || slot < slots) && r0 < listed; r0 += slots * GATHER_ROWS) {
        listed_tile_rows<GATHER_ROWS>(list, listed, r0, lb.pixelwise, rows, active, taps, OH, OW, H, W, KH, KW, sh,
                                      sw, pt, pl, dh, dw, m, mN, mH, mW);
        // This thread's two rows: their taps, and their window origins as element offsets
        // into x (plus its vector's channels).
        const unsigned long long taps0 = taps[ar], taps1 = taps[ar + 64];
        auto origin = [&](const RowCoord &q) {
            return q.n * xN + (q.oy * sh - pt) * xH + (q.ox * sw - pl) * xW + 8 * av;
        };
        const int base0 = origin(rows[ar]), base1 = origin(rows[ar + 64]);
        ChunkCursor cur;
        cur.start(gb.k_begin, gb.cin_g, KW, dh, dw, xH, xW);
        auto issue = [&](int stage, int k0) {  // chunk k0 (the cursor's) into `stage`
            const bool c_on = cur.c0 + 8 * av < gb.cin_g;
            const bool on0 = c_on && ((taps0 >> cur.t) & 1ull), on1 = c_on && ((taps1 >> cur.t) & 1ull);
            cp_async16(&s.chunk.A[stage][ar][8 * av], on0 ? xg + base0 + cur.offset : xg, on0);
            cp_async16(&s.chunk.A[stage][ar + 64][8 * av], on1 ? xg + base1 + cur.offset : xg, on1);
            const bool b_on = b_cols && k0 + bk < gb.K;
            cp_async16(&s.chunk.B[stage][bk][8 * (tid & 7)], b_on ? wg + (size_t)(k0 + bk) * gb.cout_g + bc : wg,
                       b_on);
            cur.step(gb.cin_g, KW, dh, dw, xH, xW);
        };
        float c[2][4][4] = {};
        auto multiply = [&](int stage) {
#pragma unroll
            for (int ks = 0; ks < GATHER_K; ks += 16) {
                unsigned a[2][4], bq[2][4];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
                    ldmatrix_x4(a[mi], &s.chunk.A[stage][warp_m * 32 + mi * 16 + (lane & 15)][ks + 8 * (lane >> 4)],
                                false);
#pragma unroll
                for (int nj = 0; nj < 2; ++nj)
                    ldmatrix_x4(bq[nj], &s.chunk.B[stage][ks + (lane & 15)][warp_n * 32 + nj * 16 + 8 * (lane >> 4)],
                                true);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni)
                        mma_16816(c[mi][ni], a[mi], bq[ni >> 1][(ni & 1) * 2], bq[ni >> 1][(ni & 1) * 2 + 1]);
            }
        };
        // (On return every chunk is multiplied, so C may overwrite them.)
        cp_async_pipeline<GATHER_STAGES, GATHER_K>(gb.k_begin, gb.k_end, issue, multiply);
        // Fragment (mi, ni): rows warp_m·32 + mi·16 + lane/4 (+8), channels warp_n·32 + ni·8
        // + 2·(lane % 4) (+1).
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = warp_m * 32 + mi * 16 + (lane >> 2) + 8 * h;
                    const int col = warp_n * 32 + ni * 8 + 2 * (lane & 3);
                    *reinterpret_cast<float2 *>(&s.C[row][col]) = make_float2(c[mi][ni][2 * h], c[mi][ni][2 * h + 1]);
                }
        __syncthreads();
        // Output i: row (tid / 16) + 16·(i / 4), channel co0 + 4·(tid % 16) + i % 4: each
        // thread stores runs of 4 channels (read from C as it stores them), as 16-byte
        // vectors where the layout allows.
        const int q0 = 4 * (tid & 15), p0 = tid >> 4, ch = gb.grp * gb.cout_g + gb.co0 + q0;
        const bool cols = gb.co0 + q0 < gb.cout_g;  // all 4 or none (Cout_g is a multiple of 8)
        auto sums = [&](int j) { return *reinterpret_cast<const float4 *>(&s.C[p0 + 16 * j][q0]); };
        if (PARTS) {  // ws[part][row][c]: Cout and ch are multiples of 4
            float *wr = ws + ((size_t)part * slots * GATHER_ROWS + r0 + p0) * Cout + ch;
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (cols && active[p0 + 16 * j]) *reinterpret_cast<float4 *>(wr + (size_t)16 * j * Cout) = sums(j);
        } else if ((mode & CONV_ACCUMULATE) && aC == 1 && (aN | aH | aW) % 4 == 0 &&
                   reinterpret_cast<size_t>(acc) % 16 == 0) {
            // a += round(δy) by 16-byte vectors: every load before the first store (ConvOut).
            auto at = [&](int j) {
                const RowCoord r = rows[p0 + 16 * j];
                return reinterpret_cast<float4 *>(acc + r.n * aN + r.oy * aH + r.ox * aW + ch);
            };
            float4 prev[8];
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (cols && active[p0 + 16 * j]) prev[j] = *at(j);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                if (!(cols && active[p0 + 16 * j])) continue;
                const float4 d = sums(j);
                *at(j) = make_float4(prev[j].x + round_s(d.x), prev[j].y + round_s(d.y), prev[j].z + round_s(d.z),
                                     prev[j].w + round_s(d.w));
            }
        } else {
            unsigned on = 0;
            float v[32];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float4 d = sums(j);
                v[4 * j] = d.x;
                v[4 * j + 1] = d.y;
                v[4 * j + 2] = d.z;
                v[4 * j + 3] = d.w;
                on |= (cols && active[p0 + 16 * j] ? 15u : 0u) << (4 * j);
            }
            auto at = [&](int i) {
                const RowCoord r = rows[p0 + 16 * (i >> 2)];
                return OutputAt{r.n, ch + (i & 3), r.oy, r.ox};
            };
            CONV_OUT.put(on, at, v);
        }
        __syncthreads();  // the next tile's rows overwrite rows, active and taps
    }
}

// grid (row-tile slots, groups · ceil(Cout_g / 64), zmax) (conv_gemm_gathered: zmax = 1),
// GATHER_RESIDENT blocks per SM; fp16 only.
extern "C" __global__ void __launch_bounds__(DC_BLOCK, GATHER_RESIDENT) conv_gemm_gathered(CONV_PARAMS,
                                                                                           const int *list,
                                                                                           const int *count) {
    DC_GRID_START();
    if constexpr (std::is_same<scalar_t, __half>::value) conv_gemm_gathered_tc<false>(CONV_ARGS, list, count);
}
extern "C" __global__ void __launch_bounds__(DC_BLOCK, GATHER_RESIDENT) conv_gemm_gathered_parts(CONV_PARAMS,
                                                                                                 const int *list,
                                                                                                 const int *count) {
    DC_GRID_START();
    if constexpr (std::is_same<scalar_t, __half>::value) conv_gemm_gathered_tc<true>(CONV_ARGS, list, count);
}

// The parts of a listed GEMM launch (conv_gemm_listed_parts: row tiles of TILE_P rows;
// conv_gemm_gathered_parts: GATHER_ROWS) over `blocks` = its gridDim.x · zmax blocks
// added in part order (fixed, so replays are deterministic) and stored (ConvOut) at the
// listed pixels (one part: its sums stored as they are). A persistent grid strides over
// the listed rows' elements, a thread per V channels of a row (V = 4 where Cout is a
// multiple of 4: 16-byte workspace loads); 32-bit indices (the host splits only outputs
// of fewer than 2^31 elements). blockDim 256.
template <int V>
__device__ __forceinline__ void listed_sum(int OH, int OW, int Cout, int parts, int blocks, int tile_rows,
                                           const float *ws, const int *list, int listed, const ConvOut &sink) {
    const size_t part_stride = (size_t)(blocks / parts) * tile_rows * Cout;
    const unsigned vectors = (unsigned)listed * (unsigned)(Cout / V);
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += gridDim.x * blockDim.x) {
        const unsigned e = i * V, row = e / (unsigned)Cout;
        const int c = (int)(e - row * (unsigned)Cout);
        float v[V] = {};
        for (int s = 0; s < parts; ++s) {
            float t[V];
            load_vec<V>(ws + s * part_stride + e, t);
#pragma unroll
            for (int j = 0; j < V; ++j) v[j] += t[j];
        }
        const Pixel q = pixel_at(list[row], OH, OW);
        sink.put((1u << V) - 1u, [&](int j) { return OutputAt{q.n, c + j, q.y, q.x}; }, v);
    }
}
extern "C" __global__ void __launch_bounds__(DC_BLOCK) conv_listed_sum(int OH, int OW, int Cout, int zmax, int blocks,
                                                                        int tile_rows, const float *ws,
                                                                        const int *list, const int *count, int mode,
                                                                        scalar_t *out, int oN, int oC, int oH, int oW,
                                                                        float *acc, int aN, int aC, int aH, int aW) {
    DC_GRID_START();
    const int listed = *count, parts = listed_parts(zmax, blocks, listed, tile_rows);
    if (Cout % 4 == 0)
        listed_sum<4>(OH, OW, Cout, parts, blocks, tile_rows, ws, list, listed, CONV_OUT);
    else
        listed_sum<1>(OH, OW, Cout, parts, blocks, tile_rows, ws, list, listed, CONV_OUT);
}

// The output mask of a conv whose GEMM runs over its output pixels (conv_gemm_listed):
// each block writes the mask bytes of its LIST_TILE × LIST_TILE tile, a thread per pixel
// (the pixels whose footprint touches an update, as the tiled kernels compute them),
// counts them (statistics) and appends the set ones to the list out_list. grid (tiles,
// 1, N); it reads the conv's geometry and input mask only.
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) conv_output_list(CONV_PARAMS) {
    DC_GRID_START();
    __shared__ bool active[LIST_TILE * LIST_TILE];
    __shared__ mask_t foot[FOOT_MAX];
    const TileMask t = tile_mask<FOOT_MAX, LIST_TILE>(blockIdx.z, OW, H, W, KH, KW, sh, sw, pt, pl, dh, dw, m, mN,
                                                      mH, mW, foot);
    if (tile_output_mask<LIST_TILE>(t, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, om, counter, active))
        list_tile<LIST_TILE>(t, OH, OW, active, out_list, out_count);
}

// The shared memory of a conv_depthwise block (one for all its geometries).
struct DepthwiseShared {
    bool active[TILE_P];
    mask_t foot[DW_WINDOW];  // the mask of the window (staged iff the window is)
    __align__(16) scalar_t window[DW_WINDOW][DW_CO];
    float taps[DW_TAPS][DW_CO];
};

template <int K, int S>
__device__ __forceinline__ void depthwise(DepthwiseShared &sm, CONV_PARAMS) {
    if (K) {  // a specialised geometry: the loops below unroll and every division is by a constant
        KH = KW = K;
        sh = sw = S;
        dh = dw = 1;
    }
    bool *active = sm.active;
    mask_t *foot = sm.foot;
    auto &window = sm.window;
    auto &taps = sm.taps;
    // The block's weights (staged in shared memory when they fit), loaded into registers
    // first: their loads overlap the mask's, and none waits for another.
    constexpr int TAP_LOADS = (DW_TAPS * DW_CO + DC_BLOCK - 1) / DC_BLOCK;
    const bool staged_taps = KH * KW <= DW_TAPS;
    float w[TAP_LOADS];
#pragma unroll
    for (int j = 0; j < TAP_LOADS; ++j) {
        const int i = threadIdx.x + j * DC_BLOCK, c = blockIdx.y * DW_CO + i % DW_CO;
        w[j] = staged_taps && i < KH * KW * DW_CO && c < Cout ? to_f(wp[(i / DW_CO) * Cout + c]) : 0.f;
    }
    const TileMask t = tile_mask<DW_WINDOW>(blockIdx.z, OW, H, W, KH, KW, sh, sw, pt, pl, dh, dw, m, mN, mH, mW, foot);
    if (!tile_output_mask(t, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, om, counter, active)) return;
    list_tile(t, OH, OW, active, out_list, out_count);
    const int lane = threadIdx.x & 31, row = threadIdx.x >> 5;
    const int co = blockIdx.y * DW_CO + lane;
    const int ci = co / (Cout / groups);  // Cin_g == 1: group index == input channel
    const int oy = t.ty0 + row;
    unsigned on = 0;  // bit col: pixel (row, col) of the tile is computed
#pragma unroll
    for (int col = 0; col < TILE; ++col) on |= (unsigned)(co < Cout && active[row * TILE + col]) << col;
    // The accumulator values next: their loads overlap the window's (see ConvOut).
    const ConvOut sink = CONV_OUT;
    auto at = [&](int col) { return OutputAt{t.n, co, oy, t.tx0 + col}; };
    float prev[TILE];
    sink.load(on, at, prev);
    const int rows = (TILE - 1) * sh + (KH - 1) * dh + 1;  // the window is rows × t.cols pixels
    const bool staged = rows * t.cols <= DW_WINDOW;
    if (staged && (mode & CONV_VECTOR_A)) {
        // Asynchronous 16-byte copies (cp.async), zero-filled where the mask is clear:
        // every load of the window in flight at once, through no register.
        constexpr int VW = 16 / sizeof(scalar_t);  // channels per vector
        constexpr int PER_PIXEL = DW_CO / VW;      // threads per window pixel
        const int q = threadIdx.x % PER_PIXEL, c0 = blockIdx.y * DW_CO + q * VW;
        for (int p = threadIdx.x / PER_PIXEL; p < rows * t.cols; p += DC_BLOCK / PER_PIXEL) {
            const int r = p / t.cols, iy = t.y0 + r, ix = t.x0 + (p - r * t.cols);
            const bool set = c0 < Cout && t(iy, ix);
            __pipeline_memcpy_async(&window[p][q * VW], set ? x + off4(t.n, c0, iy, ix, xN, xC, xH, xW) : x, 16,
                                    set ? 0 : 16);
        }
        __pipeline_commit();
    } else if (staged) {
        for (int p = row; p < rows * t.cols; p += 256 / DW_CO) {
            const int r = p / t.cols, iy = t.y0 + r, ix = t.x0 + (p - r * t.cols);
            window[p][lane] = (co < Cout && t(iy, ix)) ? x[off4(t.n, ci, iy, ix, xN, xC, xH, xW)] : from_f<scalar_t>(0.f);
        }
    }
    if (staged_taps)
#pragma unroll
        for (int j = 0; j < TAP_LOADS; ++j) {
            const int i = threadIdx.x + j * DC_BLOCK;
            if (i < KH * KW * DW_CO) taps[i / DW_CO][i % DW_CO] = w[j];
        }
    __pipeline_wait_prior(0);
    __syncthreads();
    if (!on) return;
    auto weight = [&](int tap) { return staged_taps ? taps[tap][lane] : to_f(wp[tap * Cout + co]); };
    float s[TILE] = {};
    if constexpr (K > 0) {
        // A tile row reads SPAN consecutive window pixels per kernel row (the window is
        // always staged here): each is loaded once and used by every tap that reads it.
        constexpr int SPAN = (TILE - 1) * S + K;
        static_assert(SPAN * SPAN <= DW_WINDOW, "the specialised geometries stage their window");
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
            float v[SPAN];
#pragma unroll
            for (int j = 0; j < SPAN; ++j) v[j] = to_f(window[(row * S + kh) * SPAN + j][lane]);
#pragma unroll
            for (int kw = 0; kw < K; ++kw) {
                const float wv = weight(kh * K + kw);
#pragma unroll
                for (int col = 0; col < TILE; ++col) s[col] += wv * v[col * S + kw];
            }
        }
    } else {
        for (int kh = 0; kh < KH; ++kh) {
            const int iy = oy * sh - pt + kh * dh;
            for (int kw = 0; kw < KW; ++kw) {
                const float wv = weight(kh * KW + kw);
                float v[TILE];
                if (staged) {
                    const int first = (row * sh + kh * dh) * t.cols + kw * dw;
#pragma unroll
                    for (int col = 0; col < TILE; ++col) v[col] = to_f(window[first + col * sw][lane]);
                } else {
                    // The tap's mask bits first, then its loads without branches.
                    unsigned hit = 0;
#pragma unroll
                    for (int col = 0; col < TILE; ++col)
                        hit |= (unsigned)(((on >> col) & 1) && t(iy, (t.tx0 + col) * sw - pl + kw * dw)) << col;
#pragma unroll
                    for (int col = 0; col < TILE; ++col) {
                        const int ix = (t.tx0 + col) * sw - pl + kw * dw;
                        v[col] = ((hit >> col) & 1) ? to_f(x[off4(t.n, ci, iy, ix, xN, xC, xH, xW)]) : 0.f;
                    }
                }
#pragma unroll
                for (int col = 0; col < TILE; ++col) s[col] += wv * v[col];
            }
        }
    }
    sink.store(on, at, s, prev);
}

// blockDim 256 = 32 output channels × 8 tile rows; grid (tiles, ceil(Cout / 32), N); never split.
// The block first stages the input window of its tile for its 32 channels in shared
// memory (in the model dtype, which holds the input values exactly; 0 where the mask is
// clear or outside the frame): one coalesced, masked load per window value instead of
// one per tap and output pixel — with CONV_VECTOR_A (one output channel per input
// channel, channels contiguous and a multiple of the vector: see depthwise_mode in
// backends/cuda/conv.py) as asynchronous 16-byte copies. The weights of its channels (up
// to DW_TAPS taps) and each thread's accumulator values (ConvOut::load) are loaded in the
// same step, so a block waits on memory twice: for the mask of its window, then for
// everything else. A thread then computes one channel of one tile row from the window,
// each output summing its taps in (kh, kw) order. Windows larger than DW_WINDOW (large
// dilations) are read from global memory tap by tap instead. 3×3 and 5×5 kernels at
// stride 1 or 2 (dilation 1) run code specialised for them (depthwise<K, S>): the
// kernel is bound by its instruction count, which constant geometry cuts by half.
// At least 4 blocks per multiprocessor.
extern "C" __global__ void __launch_bounds__(DC_BLOCK, DC_RESIDENT) conv_depthwise(CONV_PARAMS) {
    DC_GRID_START();
    // MobileNet/EfficientNet geometries get their own code (K × K taps, stride S,
    // dilation 1, the same for every block); any other runs the general one.
    __shared__ DepthwiseShared sm;
    const bool unit = dh == 1 && dw == 1 && KH == KW && sh == sw;
    if (unit && KH == 3 && sh == 1)
        depthwise<3, 1>(sm, CONV_ARGS);
    else if (unit && KH == 3 && sh == 2)
        depthwise<3, 2>(sm, CONV_ARGS);
    else if (unit && KH == 5 && sh == 1)
        depthwise<5, 1>(sm, CONV_ARGS);
    else if (unit && KH == 5 && sh == 2)
        depthwise<5, 2>(sm, CONV_ARGS);
    else
        depthwise<0, 0>(sm, CONV_ARGS);
}

// The splits of a split-K conv_gemm added in split order (fixed, so replays are
// deterministic), then stored (ConvOut), for every output element whose pixel is in
// the output mask. One thread per element of ws[0]; blockDim 256.
extern "C" __global__ void conv_split_sum(int N, int OH, int OW, int Cout, int splits, const float *ws,
                                          const mask_t *om, int mode, scalar_t *out, int oN, int oC,
                                          int oH, int oW, float *acc, int aN, int aC, int aH, int aW) {
    DC_GRID_START();
    const size_t per_split = (size_t)N * OH * OW * Cout;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= per_split) return;
    const int pixel = (int)(i / Cout), c = (int)(i - (size_t)pixel * Cout);
    if (!om[pixel]) return;
    float v = 0.f;
    for (int s = 0; s < splits; ++s) v += ws[s * per_split + i];
    const Pixel q = pixel_at(pixel, OH, OW);
    const float sum[1] = {v};
    CONV_OUT.put(1u, [&](int) { return OutputAt{q.n, c, q.y, q.x}; }, sum);
}
