// Concatenation of deltas along the channels: the output mask is the OR of the operand
// masks; inside it, each operand's channel slice holds its delta where its own mask is
// set and zero elsewhere. Operands arrive in one by-value struct (up to CAT_MAX).
// Layout: a group of `lanes` threads per output pixel (as pointwise.cu).
#include "common.cuh"

struct CatOperand {
    const scalar_t *v;
    const mask_t *m;
    int c0, C;               // first output channel, channel count
    int sN, sC, sH, sW;      // value strides
    int mN, mH, mW;          // mask strides
    int unused;              // pads the struct to 56 bytes
};

struct CatOperands {
    CatOperand op[CAT_MAX];
};

extern "C" __global__ void cat_channels(const CatOperands ops, int n_ops, int N, int H, int W,
                                        int lanes, scalar_t *out, int oN, int oC, int oH, int oW,
                                        mask_t *om, int *counter) {
    DC_GRID_START();
    const PixelGroup g = pixel_group(lanes);
    const int HW = H * W;
    const bool valid = g.pixel < N * HW;  // every thread stays for block_count
    const int pixel = valid ? g.pixel : 0;
    const int n = pixel / HW, r = pixel - n * HW, y = r / W, x = r - y * W;
    bool cand = false;
    for (int i = 0; i < n_ops && valid && !cand; ++i) {
        const CatOperand &a = ops.op[i];
        cand = a.m[off3(n, y, x, a.mN, a.mH, a.mW)] != 0;
    }
    if (valid && g.sub == 0) om[g.pixel] = cand;
    block_count(valid && g.sub == 0 && cand, counter);
    if (!cand) return;
    for (int i = 0; i < n_ops; ++i) {
        const CatOperand &a = ops.op[i];
        const bool act = a.m[off3(n, y, x, a.mN, a.mH, a.mW)] != 0;
        for (int c = g.sub; c < a.C; c += lanes) {
            const scalar_t val = act ? a.v[off4(n, c, y, x, a.sN, a.sC, a.sH, a.sW)] : from_f<scalar_t>(0.f);
            out[off4(n, a.c0 + c, y, x, oN, oC, oH, oW)] = val;
        }
    }
}
