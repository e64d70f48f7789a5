// Pooling on deltas. Windows follow torch's definitions exactly, so masks agree with
// the reference footprint (the pool applied to the 0/1 masks, > 0).
//
//   pool_window (mode POOL_MAX): max pooling is non-linear. The input is accumulated
//       beforehand (pw_accumulate into `a`); for each output pixel whose window holds an
//       updated input pixel, v = max over the window of round(a), δy = v − o, truncated
//       as in pw_truncate (o ← v where emitted).
//   pool_window (POOL_AVG, POOL_ADAPTIVE_AVG): linear, δy = mean of the masked deltas in
//       the window (avg_pool2d's divisor rules, or adaptive_avg_pool2d's windows).
//   pool_global_sum / pool_global_finish: global average pooling (output 1×1). Blocks
//       over the input's pixels add their updated pixels into an fp32 sum (atomics);
//       blocks with no updated pixel leave after reading the mask. The finish kernel
//       writes the mean and the per-sample mask, and re-zeroes the scratch.
// Layout of pool_window: a group of `lanes` threads per output pixel (as pointwise.cu).
#include "common.cuh"

// mode: POOL_MAX, POOL_AVG or POOL_ADAPTIVE_AVG (PoolMode in backends/cuda/constants.py).

extern "C" __global__ void pool_window(int N, int C, int H, int W, int OH, int OW, int lanes, int mode,
                                       int KH, int KW, int sh, int sw, int ph, int pw, int dh, int dw,
                                       int count_include_pad, int divisor_override,
                                       const scalar_t *v, int vN, int vC, int vH, int vW,
                                       const mask_t *m, int mN, int mH, int mW,
                                       const float *a, int aN, int aC, int aH, int aW,
                                       scalar_t *o, int sN, int sC, int sH, int sW, float thr,
                                       scalar_t *out, int oN, int oC, int oH, int oW, mask_t *om,
                                       int *counter) {
    DC_GRID_START();
    const PixelGroup g = pixel_group(lanes);
    const bool valid = g.pixel < N * OH * OW;
    const Pixel q = pixel_at(valid ? g.pixel : 0, OH, OW);
    const int n = q.n, oy = q.y, ox = q.x;
    // Window rows [y0, y1) step ystep, columns likewise; `divisor` for the averages.
    int y0, y1, x0, x1, ystep = 1, xstep = 1;
    float divisor = 1.f;
    if (mode == POOL_ADAPTIVE_AVG) {
        y0 = (oy * H) / OH;
        y1 = ((oy + 1) * H + OH - 1) / OH;
        x0 = (ox * W) / OW;
        x1 = ((ox + 1) * W + OW - 1) / OW;
        divisor = (float)((y1 - y0) * (x1 - x0));
    } else if (mode == POOL_AVG) {
        y0 = oy * sh - ph;
        x0 = ox * sw - pw;
        y1 = min(y0 + KH, H + ph);
        x1 = min(x0 + KW, W + pw);
        const int pool_size = (y1 - y0) * (x1 - x0);
        y0 = max(y0, 0);
        x0 = max(x0, 0);
        y1 = min(y1, H);
        x1 = min(x1, W);
        divisor = divisor_override ? (float)divisor_override
                                   : (float)(count_include_pad ? pool_size : (y1 - y0) * (x1 - x0));
    } else {
        y0 = oy * sh - ph;
        x0 = ox * sw - pw;
        y1 = min(y0 + (KH - 1) * dh + 1, H);
        x1 = min(x0 + (KW - 1) * dw + 1, W);
        while (y0 < 0) y0 += dh;
        while (x0 < 0) x0 += dw;
        ystep = dh;
        xstep = dw;
    }
    bool cand = false;
    if (valid)
        for (int y = y0; y < y1 && !cand; y += ystep)
            for (int x = x0; x < x1; x += xstep)
                if (m[off3(n, y, x, mN, mH, mW)]) {
                    cand = true;
                    break;
                }
    if (mode != POOL_MAX) {
        if (valid && g.sub == 0) om[g.pixel] = cand;
        block_count(valid && g.sub == 0 && cand, counter);
        if (!cand) return;
        for (int c = g.sub; c < C; c += lanes) {
            float s = 0.f;
            for (int y = y0; y < y1; ++y)
                for (int x = x0; x < x1; ++x)
                    if (m[off3(n, y, x, mN, mH, mW)]) s += to_f(v[off4(n, c, y, x, vN, vC, vH, vW)]);
            out[off4(n, c, oy, ox, oN, oC, oH, oW)] = from_f<scalar_t>(s / divisor);
        }
        return;
    }
    auto value = [&](int c) -> float {
        float best = -INFINITY;
        for (int y = y0; y < y1; y += ystep)
            for (int x = x0; x < x1; x += xstep)
                best = fmaxf(best, round_s(a[off4(n, c, y, x, aN, aC, aH, aW)]));
        return best;
    };
    bool emit = false;
    if (group_scope_any(cand, lanes)) {  // the same for the whole scope of group_max
        float peak = 0.f;
        for (int c0 = 0; c0 < C; c0 += lanes) {
            const int c = c0 + g.sub;
            if (cand && c < C) peak = fmaxf(peak, fabsf(value(c) - to_f(o[off4(n, c, oy, ox, sN, sC, sH, sW)])));
        }
        peak = group_max(peak, lanes);
        emit = cand && peak > thr;
    }
    if (valid && g.sub == 0) om[g.pixel] = emit;
    block_count(valid && g.sub == 0 && emit, counter);
    if (!emit) return;
    for (int c = g.sub; c < C; c += lanes) {
        scalar_t *sent = o + off4(n, c, oy, ox, sN, sC, sH, sW);
        const float v = value(c);
        const float dy = v - to_f(*sent);
        *sent = from_f<scalar_t>(v);  // exact: v is a rounded input value
        out[off4(n, c, oy, ox, oN, oC, oH, oW)] = from_f<scalar_t>(dy);
    }
}

// blockDim (32 channels, 8 pixel rows); grid (ceil(H·W / 64), ceil(C / 32), N).
// sum: fp32 (N, C) scratch, flag: int (N), both zero on entry.
extern "C" __global__ void pool_global_sum(int C, int H, int W, const scalar_t *v, int vN, int vC,
                                           int vH, int vW, const mask_t *m, int mN, int mH, int mW,
                                           float *sum, int *flag) {
    DC_GRID_START();
    __shared__ float part[8][33];
    const int n = blockIdx.z, HW = H * W;
    const int c = blockIdx.y * 32 + threadIdx.x;
    const int p0 = blockIdx.x * GLOBAL_PIXELS;
    const int tid = threadIdx.y * 32 + threadIdx.x;
    bool any = false;
    if (tid < GLOBAL_PIXELS && p0 + tid < HW) {
        const int p = p0 + tid, y = p / W;
        any = m[off3(n, y, p - y * W, mN, mH, mW)] != 0;
    }
    if (!__syncthreads_or(any)) return;
    float s = 0.f;
    if (c < C)
        for (int p = p0 + threadIdx.y; p < min(p0 + GLOBAL_PIXELS, HW); p += 8) {
            const int y = p / W, x = p - y * W;
            if (m[off3(n, y, x, mN, mH, mW)]) s += to_f(v[off4(n, c, y, x, vN, vC, vH, vW)]);
        }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.f;
        for (int r = 0; r < 8; ++r) t += part[r][threadIdx.x];
        atomicAdd(&sum[n * C + c], t);
    }
    if (tid == 0) flag[n] = 1;
}

// One block per sample: out (N, C, 1, 1) = sum / (H·W) where the sample had an update,
// its mask byte (counted into `counter`, may be null); then the sample's scratch is
// re-zeroed for the next frame.
extern "C" __global__ void pool_global_finish(int C, float inv_count, float *sum, int *flag,
                                              scalar_t *out, int oN, int oC, mask_t *om, int *counter) {
    DC_GRID_START();
    const int n = blockIdx.x;
    const bool act = flag[n] != 0;
    __syncthreads();  // every thread has read the flag before thread 0 clears it
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float *s = sum + n * C + c;
        out[n * oN + c * oC] = from_f<scalar_t>(act ? *s * inv_count : 0.f);
        *s = 0.f;
    }
    if (threadIdx.x == 0) {
        om[n] = act;
        flag[n] = 0;
        if (counter && act) atomicAdd(counter, 1);
    }
}
