// Shared definitions of the deltaconvert CUDA kernels.
//
// Conventions (DESIGN.md §1, §3):
// * Every tensor is addressed through explicit element strides (int32), so NCHW,
//   NHWC (channels_last) and broadcast (stride 0) views all work; kernels are fastest
//   on NHWC, where the channels of one pixel are contiguous.
// * Masks are torch.bool tensors (one byte, 0 or 1) of shape (N, 1, H, W).
// * A delta's values outside its mask are unspecified: kernels read a value only
//   where its mask is set, and treat it as zero elsewhere.
// * scalar_t is the model's dtype (float or __half, chosen by -DDC_SCALAR=...);
//   arithmetic and state buffers are fp32. round_s() mirrors the reference
//   backend's casts to the model dtype, so both backends compute the same math.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

#ifndef DC_SCALAR
#define DC_SCALAR float
#endif
typedef DC_SCALAR scalar_t;
typedef unsigned char mask_t;

#define DC_FULL_WARP 0xffffffffu

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// A value rounded to the model dtype (identity in fp32).
__device__ __forceinline__ float round_s(float x) { return to_f(from_f<scalar_t>(x)); }

// Reductions over aligned groups of `lanes` threads (a power of two ≤ 32). Every lane
// of the warp must call them (they shuffle over the full warp).
__device__ __forceinline__ float group_max(float v, int lanes) {
    for (int o = lanes >> 1; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(DC_FULL_WARP, v, o));
    return v;
}
__device__ __forceinline__ float group_sum(float v, int lanes) {
    for (int o = lanes >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(DC_FULL_WARP, v, o);
    return v;
}

// The position of one thread in the "group of lanes per pixel" layout used by the
// per-pixel kernels: pixel = global group index, sub = lane inside the group.
struct PixelGroup {
    int pixel;
    int sub;
};
__device__ __forceinline__ PixelGroup pixel_group(int lanes) {
    const int tid = blockIdx.x * blockDim.x + threadIdx.x;
    PixelGroup g;
    g.pixel = tid / lanes;
    g.sub = tid - g.pixel * lanes;
    return g;
}

// Element-wise functions f of the accumulate-recompute-truncate rule. p0/p1 are the
// function's parameters (slopes, bounds). Each matches torch's definition.
enum Activation {
    ACT_IDENTITY = 0,
    ACT_RELU = 1,
    ACT_HARDTANH = 2,     // clamp(x, p0, p1); ReLU6 is (0, 6)
    ACT_LEAKY_RELU = 3,   // x > 0 ? x : p0 * x
    ACT_SIGMOID = 4,
    ACT_SILU = 5,
    ACT_HARDSWISH = 6,
    ACT_HARDSIGMOID = 7,
    ACT_GELU = 8,         // exact (erf)
    ACT_GELU_TANH = 9,
    ACT_TANH = 10,
    ACT_ELU = 11,         // x > 0 ? x : p0 * (exp(x) - 1)
};

__device__ __forceinline__ float activate(int code, float x, float p0, float p1) {
    switch (code) {
    case ACT_RELU: return x > 0.f ? x : 0.f;
    case ACT_HARDTANH: return fminf(fmaxf(x, p0), p1);
    case ACT_LEAKY_RELU: return x > 0.f ? x : x * p0;
    case ACT_SIGMOID: return 1.f / (1.f + expf(-x));
    case ACT_SILU: return x / (1.f + expf(-x));
    case ACT_HARDSWISH: return x * fminf(fmaxf(x + 3.f, 0.f), 6.f) * (1.f / 6.f);
    case ACT_HARDSIGMOID: return fminf(fmaxf(x + 3.f, 0.f), 6.f) * (1.f / 6.f);
    case ACT_GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case ACT_GELU_TANH: {
        const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.f + tanhf(inner));
    }
    case ACT_TANH: return tanhf(x);
    case ACT_ELU: return x > 0.f ? x : p0 * expm1f(x);
    default: return x;
    }
}

// Addressing helpers.
__device__ __forceinline__ int off4(int n, int c, int y, int x, int sN, int sC, int sH, int sW) {
    return n * sN + c * sC + y * sH + x * sW;
}
__device__ __forceinline__ int off3(int n, int y, int x, int mN, int mH, int mW) {
    return n * mN + y * mH + x * mW;
}
