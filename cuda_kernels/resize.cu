// Resizing (nearest, nearest-exact, bilinear) of deltas: linear with non-negative
// weights, so δy = resize(masked δ), updated where a source pixel with a positive weight
// was updated. Source indices and weights follow torch's CUDA upsampling kernels;
// rh, rw are torch's scales (area_pixel_compute_scale), computed on the host.
// Layout: a group of `lanes` threads per output pixel (as pointwise.cu).
#include "common.cuh"

// mode: RESIZE_NEAREST, RESIZE_NEAREST_EXACT or RESIZE_BILINEAR (ResizeMode in
// backends/cuda/constants.py).

// Bilinear source index along one axis: lower index i0, step to the upper neighbour
// (0 at the border) and the two weights.
__device__ __forceinline__ void bilinear_axis(int dst, int size, float scale, int align_corners,
                                              int &i0, int &step, float &l0, float &l1) {
    float src = align_corners ? scale * dst : scale * (dst + 0.5f) - 0.5f;
    if (!align_corners && src < 0.f) src = 0.f;
    i0 = (int)src;
    step = i0 < size - 1 ? 1 : 0;
    l1 = src - i0;
    l0 = 1.f - l1;
}

__device__ __forceinline__ int nearest_index(int dst, int size, float scale, int exact) {
    const float src = exact ? floorf((dst + 0.5f) * scale) : floorf(dst * scale);
    return min((int)src, size - 1);
}

extern "C" __global__ void resize(int N, int C, int H, int W, int OH, int OW, int lanes, int mode,
                                  int align_corners, float rh, float rw,
                                  const scalar_t *v, int vN, int vC, int vH, int vW,
                                  const mask_t *m, int mN, int mH, int mW,
                                  scalar_t *out, int oN, int oC, int oH, int oW, mask_t *om,
                                  int *counter) {
    DC_GRID_START();
    const PixelGroup g = pixel_group(lanes);
    const int OHW = OH * OW;
    const bool valid = g.pixel < N * OHW;  // every thread stays for block_count
    const int pixel = valid ? g.pixel : 0;
    const int n = pixel / OHW, r = pixel - n * OHW, oy = r / OW, ox = r - oy * OW;
    // Up to four taps (y, x, weight-y, weight-x); nearest uses one.
    int ty[4], tx[4];
    float wy[4], wx[4];
    int taps;
    if (mode == RESIZE_BILINEAR) {
        int y0, ys, x0, xs;
        float hy0, hy1, hx0, hx1;
        bilinear_axis(oy, H, rh, align_corners, y0, ys, hy0, hy1);
        bilinear_axis(ox, W, rw, align_corners, x0, xs, hx0, hx1);
        ty[0] = y0;      tx[0] = x0;      wy[0] = hy0; wx[0] = hx0;
        ty[1] = y0;      tx[1] = x0 + xs; wy[1] = hy0; wx[1] = hx1;
        ty[2] = y0 + ys; tx[2] = x0;      wy[2] = hy1; wx[2] = hx0;
        ty[3] = y0 + ys; tx[3] = x0 + xs; wy[3] = hy1; wx[3] = hx1;
        taps = 4;
    } else {
        const int exact = mode == RESIZE_NEAREST_EXACT;
        ty[0] = nearest_index(oy, H, rh, exact);
        tx[0] = nearest_index(ox, W, rw, exact);
        wy[0] = wx[0] = 1.f;
        taps = 1;
    }
    bool on[4];
    bool cand = false;
    for (int t = 0; t < taps; ++t) {
        on[t] = wy[t] > 0.f && wx[t] > 0.f && m[off3(n, ty[t], tx[t], mN, mH, mW)];
        cand = valid && (cand || on[t]);
    }
    if (valid && g.sub == 0) om[g.pixel] = cand;
    block_count(valid && g.sub == 0 && cand, counter);
    if (!cand) return;
    for (int c = g.sub; c < C; c += lanes) {
        float t4[4];
        for (int t = 0; t < taps; ++t)
            t4[t] = on[t] ? to_f(v[off4(n, c, ty[t], tx[t], vN, vC, vH, vW)]) : 0.f;
        const float s = taps == 1 ? t4[0]
                                  : wy[0] * (wx[0] * t4[0] + wx[1] * t4[1]) +
                                        wy[2] * (wx[2] * t4[2] + wx[3] * t4[3]);
        out[off4(n, c, oy, ox, oN, oC, oH, oW)] = from_f<scalar_t>(s);
    }
}
