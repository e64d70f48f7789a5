// Delta convolution: δy = conv(δx) without bias, on the output pixels whose input
// footprint (kernel extent, dilation, zero padding, stride) touches an updated pixel.
//
// Each block owns an 8×8 tile of output pixels of one sample. It first computes the
// tile's output mask from the input mask; a tile with no updated pixel writes its mask
// bytes and leaves without reading values or weights. Inside an active tile, inactive
// output pixels read no input values either.
//
// Two kernels share that structure:
//   conv_gemm       implicit GEMM for any group size: output pixels × output channels of
//                   one group, reduced over K = KH·KW·Cin_g (a 1×1 conv is a plain
//                   matrix product over the channels). Weights packed [G][KH][KW][Cin_g][Cout_g].
//   conv_depthwise  one input channel per group (Cin_g = 1, any channel multiplier);
//                   weights packed [KH][KW][Cout].
// Epilogue `mode`: 0 writes δy (model dtype); 1 adds round(δy) into an fp32 accumulator
// (the state of a following activation, which then truncates: see pw_truncate).
#include "common.cuh"

#define TILE 8           // output tile is TILE × TILE pixels
#define TILE_P 64        // pixels per tile
#define GEMM_CO 64       // output channels per conv_gemm block
#define GEMM_K 16        // reduction chunk
#define DW_CO 32         // output channels per conv_depthwise block

#define CONV_PARAMS                                                                        \
    int N, int Cin, int H, int W, int Cout, int OH, int OW, int KH, int KW, int sh, int sw, \
        int pt, int pl, int dh, int dw, int groups,                                         \
        const scalar_t *x, int xN, int xC, int xH, int xW,                                  \
        const mask_t *m, int mN, int mH, int mW, const scalar_t *wp, int mode,              \
        scalar_t *out, int oN, int oC, int oH, int oW,                                      \
        float *acc, int aN, int aC, int aH, int aW, mask_t *om

// Output mask of this block's tile into `active` (also written to `om` by the blocks
// with blockIdx.y == 0). Returns whether any pixel of the tile is active. All threads
// of the block must call it.
__device__ __forceinline__ bool tile_output_mask(int n, int ty0, int tx0, int OH, int OW, int H, int W,
                                                 int KH, int KW, int sh, int sw, int pt, int pl,
                                                 int dh, int dw, const mask_t *m, int mN, int mH,
                                                 int mW, mask_t *om, bool *active) {
    const int p = threadIdx.x;
    bool act = false;
    if (p < TILE_P) {
        const int oy = ty0 + p / TILE, ox = tx0 + p % TILE;
        if (oy < OH && ox < OW) {
            for (int kh = 0; kh < KH && !act; ++kh) {
                const int iy = oy * sh - pt + kh * dh;
                if (iy < 0 || iy >= H) continue;
                for (int kw = 0; kw < KW; ++kw) {
                    const int ix = ox * sw - pl + kw * dw;
                    if (ix >= 0 && ix < W && m[off3(n, iy, ix, mN, mH, mW)]) {
                        act = true;
                        break;
                    }
                }
            }
            if (blockIdx.y == 0) om[(n * OH + oy) * OW + ox] = act;
        }
        active[p] = act;
    }
    return __syncthreads_or(act) != 0;
}

__device__ __forceinline__ void conv_store(int mode, float v, int n, int c, int oy, int ox,
                                           scalar_t *out, int oN, int oC, int oH, int oW,
                                           float *acc, int aN, int aC, int aH, int aW) {
    if (mode == 0) {
        out[off4(n, c, oy, ox, oN, oC, oH, oW)] = from_f<scalar_t>(v);
    } else {
        float *a = acc + off4(n, c, oy, ox, aN, aC, aH, aW);
        *a = *a + round_s(v);
    }
}

// blockDim 256; grid (tiles, groups · ceil(Cout_g / 64), N).
extern "C" __global__ void __launch_bounds__(256) conv_gemm(CONV_PARAMS) {
    __shared__ bool active[TILE_P];
    __shared__ float As[TILE_P][GEMM_K + 1];
    __shared__ __align__(16) float Bs[GEMM_K][GEMM_CO];

    const int tid = threadIdx.x;
    const int n = blockIdx.z;
    const int tiles_x = (OW + TILE - 1) / TILE;
    const int ty0 = (blockIdx.x / tiles_x) * TILE, tx0 = (blockIdx.x % tiles_x) * TILE;
    if (!tile_output_mask(n, ty0, tx0, OH, OW, H, W, KH, KW, sh, sw, pt, pl, dh, dw, m, mN, mH,
                          mW, om, active))
        return;

    const int cin_g = Cin / groups, cout_g = Cout / groups;
    const int blocks_per_group = (cout_g + GEMM_CO - 1) / GEMM_CO;
    const int grp = blockIdx.y / blocks_per_group;
    const int co0 = (blockIdx.y - grp * blocks_per_group) * GEMM_CO;
    const int K = KH * KW * cin_g;

    // A tile loads: this thread fills reduction row kk for pixels (tid/16) + 16·i.
    const int kk = tid & (GEMM_K - 1);
    int py[4], px[4];
    bool pok[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int p = (tid >> 4) + 16 * i;
        pok[i] = active[p];
        py[i] = (ty0 + p / TILE) * sh - pt;
        px[i] = (tx0 + p % TILE) * sw - pl;
    }
    // Compute mapping: pixels 4·ty..4·ty+3, output channels 4·tx..4·tx+3.
    const int tx = tid & 15, ty = tid >> 4;
    float sum[4][4] = {};
    const scalar_t *xg = x + grp * cin_g * xC;
    const scalar_t *wg = wp + (size_t)grp * K * cout_g;

    for (int k0 = 0; k0 < K; k0 += GEMM_K) {
        const int kg = k0 + kk;
        const bool kok = kg < K;
        int ci = 0, kh = 0, kw = 0;
        if (kok) {
            const int r = kg / cin_g;
            ci = kg - r * cin_g;
            kh = r / KW;
            kw = r - kh * KW;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float v = 0.f;
            if (kok && pok[i]) {
                const int iy = py[i] + kh * dh, ix = px[i] + kw * dw;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W && m[off3(n, iy, ix, mN, mH, mW)])
                    v = to_f(xg[off4(n, ci, iy, ix, xN, xC, xH, xW)]);
            }
            As[(tid >> 4) + 16 * i][kk] = v;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int kb = (tid >> 6) + 4 * i, co = tid & 63;
            const int kgb = k0 + kb, cog = co0 + co;
            Bs[kb][co] = (kgb < K && cog < cout_g) ? to_f(wg[(size_t)kgb * cout_g + cog]) : 0.f;
        }
        __syncthreads();
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
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int p = ty * 4 + i;
        if (!active[p]) continue;
        const int oy = ty0 + p / TILE, ox = tx0 + p % TILE;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int co = co0 + tx * 4 + j;
            if (co < cout_g)
                conv_store(mode, sum[i][j], n, grp * cout_g + co, oy, ox, out, oN, oC, oH, oW, acc,
                           aN, aC, aH, aW);
        }
    }
}

// blockDim 256 = 32 output channels × 8 tile rows; grid (tiles, ceil(Cout / 32), N).
extern "C" __global__ void __launch_bounds__(256) conv_depthwise(CONV_PARAMS) {
    __shared__ bool active[TILE_P];
    const int n = blockIdx.z;
    const int tiles_x = (OW + TILE - 1) / TILE;
    const int ty0 = (blockIdx.x / tiles_x) * TILE, tx0 = (blockIdx.x % tiles_x) * TILE;
    if (!tile_output_mask(n, ty0, tx0, OH, OW, H, W, KH, KW, sh, sw, pt, pl, dh, dw, m, mN, mH,
                          mW, om, active))
        return;
    const int co = blockIdx.y * DW_CO + (threadIdx.x & 31);
    if (co >= Cout) return;
    const int ci = co / (Cout / groups);  // Cin_g == 1: group index == input channel
    const int row = threadIdx.x >> 5;
    for (int col = 0; col < TILE; ++col) {
        const int p = row * TILE + col;
        if (!active[p]) continue;
        const int oy = ty0 + row, ox = tx0 + col;
        float s = 0.f;
        for (int kh = 0; kh < KH; ++kh) {
            const int iy = oy * sh - pt + kh * dh;
            if (iy < 0 || iy >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int ix = ox * sw - pl + kw * dw;
                if (ix >= 0 && ix < W && m[off3(n, iy, ix, mN, mH, mW)])
                    s += to_f(wp[(kh * KW + kw) * Cout + co]) * to_f(x[off4(n, ci, iy, ix, xN, xC, xH, xW)]);
            }
        }
        conv_store(mode, s, n, co, oy, ox, out, oN, oC, oH, oW, acc, aN, aC, aH, aW);
    }
}
