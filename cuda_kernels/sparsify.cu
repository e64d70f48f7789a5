// Sparsify: a dense frame x → a delta against ref, the input the network has seen.
//   δ = x − ref;  m = max_c |δ| > thr, dilated by `dil` pixels (square window);
//   where m: ref += δ, out = δ.       (ref is fp32; x and out are scalar_t)
// Layout as in pointwise.cu: a group of `lanes` threads per pixel.
#include "common.cuh"

// max_c |x − ref| at pixel (n, y, x), reduced over the pixel's group of `lanes` threads
// (0 where !valid). Every lane of the group must call it.
__device__ __forceinline__ float change_peak(bool valid, int n, int y, int x, int C, int lanes, int sub,
                                             const scalar_t *xv, int xN, int xC, int xH, int xW,
                                             const float *ref, int rN, int rC, int rH, int rW) {
    float peak = 0.f;
    for (int c0 = 0; c0 < C; c0 += lanes) {
        const int c = c0 + sub;
        if (valid && c < C) {
            const float d = to_f(xv[off4(n, c, y, x, xN, xC, xH, xW)]) - ref[off4(n, c, y, x, rN, rC, rH, rW)];
            peak = fmaxf(peak, fabsf(d));
        }
    }
    return group_max(peak, lanes);
}

// raw[p] = max_c |x − ref| > thr (the undilated mask; only used when dil > 0).
extern "C" __global__ void sparsify_mask(int N, int C, int H, int W, int lanes,
                                         const scalar_t *xv, int xN, int xC, int xH, int xW,
                                         const float *ref, int rN, int rC, int rH, int rW,
                                         float thr, mask_t *raw) {
    DC_GRID_START();
    const PixelGroup g = pixel_group(lanes);
    const bool valid = g.pixel < N * H * W;
    const Pixel q = pixel_at(valid ? g.pixel : 0, H, W);
    const int n = q.n, y = q.y, x = q.x;
    const float peak = change_peak(valid, n, y, x, C, lanes, g.sub, xv, xN, xC, xH, xW, ref, rN, rC, rH, rW);
    if (valid && g.sub == 0) raw[g.pixel] = peak > thr;
}

// Writes the delta and its mask and updates ref. With raw == null the mask is computed
// here (no dilation); otherwise m = any raw in the (2·dil+1)² window around the pixel.
// `counter` and `changed` (each may be null) += the pixels of the mask (`changed` feeds
// the frame condition of graph.cu and does not depend on statistics being on).
extern "C" __global__ void sparsify_apply(int N, int C, int H, int W, int lanes,
                                          const scalar_t *xv, int xN, int xC, int xH, int xW,
                                          float *ref, int rN, int rC, int rH, int rW,
                                          float thr, const mask_t *raw, int dil,
                                          scalar_t *out, int oN, int oC, int oH, int oW,
                                          mask_t *om, int *counter, int *changed) {
    DC_GRID_START();
    const PixelGroup g = pixel_group(lanes);
    const bool valid = g.pixel < N * H * W;
    const Pixel q = pixel_at(valid ? g.pixel : 0, H, W);
    const int n = q.n, y = q.y, x = q.x;
    bool emit = false;
    if (raw) {
        if (valid) {
            for (int dy = -dil; dy <= dil && !emit; ++dy) {
                const int yy = y + dy;
                if (yy < 0 || yy >= H) continue;
                for (int dx = -dil; dx <= dil; ++dx) {
                    const int xx = x + dx;
                    if (xx >= 0 && xx < W && raw[(n * H + yy) * W + xx]) {
                        emit = true;
                        break;
                    }
                }
            }
        }
    } else {
        // every lane joins the reduction
        emit = change_peak(valid, n, y, x, C, lanes, g.sub, xv, xN, xC, xH, xW, ref, rN, rC, rH, rW) > thr && valid;
    }
    if (valid && g.sub == 0) om[g.pixel] = emit;
    block_count(valid && g.sub == 0 && emit, counter);
    block_count(valid && g.sub == 0 && emit, changed);
    if (!emit) return;
    for (int c = g.sub; c < C; c += lanes) {
        float *r = ref + off4(n, c, y, x, rN, rC, rH, rW);
        const float d = to_f(xv[off4(n, c, y, x, xN, xC, xH, xW)]) - *r;
        *r = *r + d;
        out[off4(n, c, y, x, oN, oC, oH, oW)] = from_f<scalar_t>(d);
    }
}
