// Shared definitions of the deltaconvert CUDA kernels.
//
// Conventions (docs/ARCHITECTURE.md §1, §5):
// * Every tensor is addressed through explicit element strides (int32), so NCHW,
//   NHWC (channels_last) and broadcast (stride 0) views all work; kernels are fastest
//   on NHWC, where the channels of one pixel are contiguous.
// * Masks are torch.bool tensors (one byte, 0 or 1) of shape (N, 1, H, W).
// * A delta's values outside its mask are unspecified: kernels read a value only
//   where its mask is set, and treat it as zero elsewhere.
// * scalar_t is the model's dtype (float or __half, chosen by -DDC_SCALAR=...);
//   arithmetic, accumulators and references are fp32; sent outputs o are scalar_t
//   (every sent value is a rounded output value, so that is exact: sent_dtype in
//   ops/reference.py). round_s() mirrors the reference backend's casts to the model
//   dtype, so both backends compute the same math.
#pragma once
#include "constants.cuh"  // the values of backends/cuda/constants.py (also passed as -D)
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

// Reductions over the group of `lanes` threads of one pixel (a power of two ≤ 256;
// blocks have 256 threads, see pixel_grid in backends/cuda/tensors.py). A group of ≤ 32
// lanes is an aligned part of a warp and reduces with shuffles; a larger group is a run
// of whole warps: each warp reduces with shuffles, then the group's warps combine
// through shared memory. Every lane of the warp — and for groups of more than 32 lanes
// every thread of the block — must call them (see group_scope_any).
template <bool MAX>
__device__ __forceinline__ float group_reduce(float v, int lanes) {
    for (int o = (lanes < 32 ? lanes : 32) >> 1; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(DC_FULL_WARP, v, o);
        v = MAX ? fmaxf(v, u) : v + u;
    }
    if (lanes <= 32) return v;
    __shared__ float part[32];  // one value per warp of the block
    __syncthreads();            // readers of the previous reduction are done with part
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    const int warps = lanes >> 5, first = (threadIdx.x >> 5) / warps * warps;
    v = part[first];
    for (int w = 1; w < warps; ++w) v = MAX ? fmaxf(v, part[first + w]) : v + part[first + w];
    return v;
}
__device__ __forceinline__ float group_max(float v, int lanes) { return group_reduce<true>(v, lanes); }
__device__ __forceinline__ float group_sum(float v, int lanes) { return group_reduce<false>(v, lanes); }

// Whether any thread of the scope that group reductions synchronise — the warp for
// groups of ≤ 32 lanes, the block for larger ones — has `v` set. A scope where none has
// work may return at once without breaking a later reduction. The whole scope must call it.
__device__ __forceinline__ bool group_scope_any(bool v, int lanes) {
    return lanes <= 32 ? __any_sync(DC_FULL_WARP, v) : __syncthreads_or(v) != 0;
}

// Programmatic dependent launch (backends/cuda/dependent_launch.py). Every entry point
// starts with DC_GRID_START(): wait until the kernel before it on the stream has
// completed and its writes are visible, then let the next kernel launch — its blocks
// start while this one runs, instead of after it. For a launch without the programmatic
// attribute (the default) both instructions return at once.
#if __CUDA_ARCH__ >= 900
#define DC_GRID_START() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define DC_GRID_START() ((void)0)
#endif

// Block-local work lists (pointwise.cu). A block of DC_BLOCK threads covers `span`
// consecutive pixels, span = (DC_BLOCK / lanes groups) × depth, depth ≤ 4 chosen by the
// host (list_grid in backends/cuda/tensors.py). Thread i < span reads the flags of pixel
// base + i (one coalesced byte each), the pixels with work are compacted into a shared
// list (block_list), and the groups take the entries in rounds — at most `depth`. A
// region without updates costs one mask read per pixel instead of `lanes` threads per
// pixel; every round is block-uniform, so group reductions stay legal inside it.
// DC_BLOCK (threads per block, 256) comes from backends/cuda/constants.py.

// The pixel this thread scans: base + threadIdx.x, valid below the span and the frame.
// The block's window starts at base = blockIdx.x · span unless the kernel loops over
// windows itself (pw_truncate over a list).
struct ScanPixel {
    int base, pixel;
    bool valid;
};
__device__ __forceinline__ ScanPixel scan_pixel(int pixels, int span, int base) {
    ScanPixel s;
    s.base = base;
    s.pixel = s.base + (int)threadIdx.x;
    s.valid = (int)threadIdx.x < span && s.pixel < pixels;
    return s;
}

// Coordinates (n, y, x) of a linear pixel index over (N, H, W).
struct Pixel {
    int n, y, x;
};
__device__ __forceinline__ Pixel pixel_at(int pixel, int H, int W) {
    Pixel q;
    q.n = pixel / (H * W);
    const int r = pixel - q.n * H * W;
    q.y = r / W;
    q.x = r - q.y * W;
    return q;
}

// The list entry this thread's group takes in the round that starts at entry r0. `cand`
// is false for the spare groups of the last round (they still join group reductions).
// List tags are (scan thread index << 2 | flags); `flags` holds the two low bits.
struct ListPixel {
    int sub, pixel, flags;
    bool cand;
    Pixel at;
};
__device__ __forceinline__ ListPixel list_pixel(const int *list, int count, int r0, int lanes,
                                                int base, int H, int W) {
    ListPixel p;
    p.sub = threadIdx.x % lanes;
    const int i = r0 + (int)threadIdx.x / lanes;
    p.cand = i < count;
    const int tag = p.cand ? list[i] : 0;
    p.flags = tag & 3;
    p.pixel = base + (tag >> 2);
    p.at = pixel_at(p.pixel, H, W);
    return p;
}

// Stores `tag` of every thread with `has` set into `list` (in thread order) and returns
// how many there are. Every thread of the block (blockDim.x == DC_BLOCK) must call it.
__device__ __forceinline__ int block_list(bool has, int tag, int *list) {
    __shared__ int base[DC_BLOCK / 32 + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned ballot = __ballot_sync(DC_FULL_WARP, has);
    if (lane == 0) base[warp] = __popc(ballot);
    __syncthreads();
    if (threadIdx.x == 0) {
        int total = 0;
        for (int w = 0; w < DC_BLOCK / 32; ++w) {
            const int c = base[w];
            base[w] = total;
            total += c;
        }
        base[DC_BLOCK / 32] = total;
    }
    __syncthreads();
    if (has) list[base[warp] + __popc(ballot & ((1u << lane) - 1u))] = tag;
    __syncthreads();
    return base[DC_BLOCK / 32];
}

// Pixel work lists (backends/cuda/worklist.py). A kernel writing an output mask may also
// append the pixels it set to a list of its consumers: list[0:*count) holds exactly the
// set pixels' linear indices (n·H·W + y·W + x), in no particular order; *count is zeroed
// at the start of each frame. A block appends its `n` entries from shared memory with
// one atomicAdd: list[base + i] = offset + (entries[i] >> shift) (shift and offset turn
// block_list tags into pixels). Nothing happens when `list` is null. Every thread of the
// block must call it; `entries` must be complete (the caller synchronised after writing).
__device__ __forceinline__ void list_append(const int *entries, int n, int shift, int offset, int *list,
                                            int *count) {
    __shared__ int base;
    if (list == nullptr) return;  // the same pointer for the whole block
    if (threadIdx.x == 0) base = n ? atomicAdd(count, n) : 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) list[base + i] = offset + (entries[i] >> shift);
}

// Appends `value` of every lane with `has` set to `list` (one atomicAdd per warp, entries
// in lane order). Every lane of the warp must call it.
__device__ __forceinline__ void warp_append(bool has, int value, int *list, int *count) {
    const unsigned ballot = __ballot_sync(DC_FULL_WARP, has);
    if (!ballot) return;
    const int lane = threadIdx.x & 31, leader = __ffs(ballot) - 1;
    int base = 0;
    if (lane == leader) base = atomicAdd(count, __popc(ballot));
    base = __shfl_sync(DC_FULL_WARP, base, leader);
    if (has) list[base + __popc(ballot & ((1u << lane) - 1u))] = value;
}

// Sets byte `i` of mask `m` with one atomicOr on the 32-bit word that holds it, and
// returns whether this call turned it on (exactly one call per byte and frame does).
// The word must lie inside the allocation (torch and FrameArena round masks up to 16
// bytes or more).
__device__ __forceinline__ bool set_mask_byte(mask_t *m, int i) {
    const uintptr_t at = reinterpret_cast<uintptr_t>(m + i);
    const int shift = (int)(at & 3u) * 8;
    const unsigned old = atomicOr(reinterpret_cast<unsigned *>(at & ~(uintptr_t)3u), 1u << shift);
    return ((old >> shift) & 0xffu) == 0;
}

// Output lists written by the producer (backends/cuda/output_lists.py). A truncation
// whose output is the input of a conv with listed GEMM rows may write that conv's output
// mask and list itself, so that the conv needs no conv_output_list launch: for every
// pixel it emits, each output pixel whose footprint holds it, oy = (y + pt − ky·dh) / sh
// where that divides exactly and lies inside the map (likewise x), is set in the conv's
// mask, and the call that turned its byte on appends it to the conv's list. The result
// is conv_output_list's mask and list (in another order). The mask and count must be
// zero at the frame's start (the frame arena).
struct ConvTarget {
    int OH, OW, KH, KW, sh, sw, pt, pl, dh, dw;  // the conv's output size and geometry
    mask_t *om;                                  // its output mask, (N, 1, OH, OW) contiguous
    int *list, *count;                           // its list of output pixels
};
struct ConvTargets {  // passed by value; n ≤ CONV_TARGETS
    ConvTarget t[CONV_TARGETS];
    int n;
    int unused;  // pads the struct to a multiple of 8 bytes
};

// Marks the outputs of every target conv for the block's emitted pixels emits[0:n) (over
// N × H × W, the convs' input). Every thread of the block calls it, after `emits` is
// complete; the rounds are block-uniform, so every warp appends whole.
__device__ __forceinline__ void mark_conv_outputs(const ConvTargets &targets, const int *emits, int n, int H,
                                                  int W) {
#pragma unroll  // constant indices: the targets stay in the parameter space
    for (int k = 0; k < CONV_TARGETS; ++k) {
        if (k >= targets.n) break;
        const ConvTarget &c = targets.t[k];
        const int taps = c.KH * c.KW, items = n * taps;
        for (int r0 = 0; r0 < items; r0 += DC_BLOCK) {
            const int i = r0 + (int)threadIdx.x;
            bool fresh = false;
            int out = 0;
            if (i < items) {
                const int e = i / taps, tap = i - e * taps, ky = tap / c.KW, kx = tap - ky * c.KW;
                const Pixel q = pixel_at(emits[e], H, W);
                const int ty = q.y + c.pt - ky * c.dh, tx = q.x + c.pl - kx * c.dw;
                const int oy = ty / c.sh, ox = tx / c.sw;
                if (ty >= 0 && tx >= 0 && oy * c.sh == ty && ox * c.sw == tx && oy < c.OH && ox < c.OW) {
                    out = (q.n * c.OH + oy) * c.OW + ox;
                    fresh = set_mask_byte(c.om, out);
                }
            }
            warp_append(fresh, out, c.list, c.count);
        }
    }
}

// Update counters (statistics, see deltaconvert/stats.py): a kernel that writes an
// output mask adds how many of its bytes it set to one int32 counter of the op. One
// global atomic per block whose share is not zero, none when `counter` is null
// (statistics off). Every thread of the block must call it; `n` is this thread's share.
__device__ __forceinline__ void block_count(int n, int *counter) {
    __shared__ int share;
    if (counter == nullptr) return;  // the same pointer for the whole block
    if (threadIdx.x == 0) share = 0;
    __syncthreads();
    n = __reduce_add_sync(DC_FULL_WARP, n);
    if ((threadIdx.x & 31) == 0 && n) atomicAdd_block(&share, n);
    __syncthreads();
    if (threadIdx.x == 0 && share) atomicAdd(counter, share);
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
// function's parameters (slopes, bounds). Each matches torch's definition; the codes
// ACT_* are the members of Activation in backends/cuda/constants.py.
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

// Channel vectors: V consecutive channels (channel stride 1) loaded or stored at once,
// as fp32 values: V = 1, 4 or 8 (8: fp32 as two 16-byte loads, fp16 as one). The caller
// guarantees the alignment (V elements, at most 16 bytes).
template <int V>
__device__ __forceinline__ void load_vec(const float *p, float (&v)[V]) {
    static_assert(V == 1 || V == 4 || V == 8, "channel vectors of 1, 4 or 8");
    if constexpr (V == 1) {
        v[0] = *p;
    } else {
#pragma unroll
        for (int h = 0; h < V; h += 4) {
            const float4 q = *reinterpret_cast<const float4 *>(p + h);
            v[h] = q.x, v[h + 1] = q.y, v[h + 2] = q.z, v[h + 3] = q.w;
        }
    }
}
template <int V>
__device__ __forceinline__ void load_vec(const __half *p, float (&v)[V]) {
    static_assert(V == 1 || V == 4 || V == 8, "channel vectors of 1, 4 or 8");
    if constexpr (V == 1) {
        v[0] = __half2float(*p);
    } else {
        __half2 q[V / 2];
        if constexpr (V == 4)
            *reinterpret_cast<uint2 *>(q) = *reinterpret_cast<const uint2 *>(p);
        else
            *reinterpret_cast<uint4 *>(q) = *reinterpret_cast<const uint4 *>(p);
#pragma unroll
        for (int h = 0; h < V / 2; ++h) {
            const float2 f = __half22float2(q[h]);
            v[2 * h] = f.x, v[2 * h + 1] = f.y;
        }
    }
}
template <int V>
__device__ __forceinline__ void store_vec(float *p, const float (&v)[V]) {
    static_assert(V == 1 || V == 4 || V == 8, "stores of 1, 4 or 8 channels");
    if constexpr (V == 1) {
        *p = v[0];
    } else {
#pragma unroll
        for (int h = 0; h < V; h += 4)
            *reinterpret_cast<float4 *>(p + h) = make_float4(v[h], v[h + 1], v[h + 2], v[h + 3]);
    }
}
template <int V>
__device__ __forceinline__ void store_vec(__half *p, const float (&v)[V]) {
    static_assert(V == 1 || V == 4 || V == 8, "stores of 1, 4 or 8 channels");
    if constexpr (V == 8) {
        uint4 q;
        *reinterpret_cast<__half2 *>(&q.x) = __floats2half2_rn(v[0], v[1]);
        *reinterpret_cast<__half2 *>(&q.y) = __floats2half2_rn(v[2], v[3]);
        *reinterpret_cast<__half2 *>(&q.z) = __floats2half2_rn(v[4], v[5]);
        *reinterpret_cast<__half2 *>(&q.w) = __floats2half2_rn(v[6], v[7]);
        *reinterpret_cast<uint4 *>(p) = q;
    } else if constexpr (V == 4) {
        uint2 q;
        *reinterpret_cast<__half2 *>(&q.x) = __floats2half2_rn(v[0], v[1]);
        *reinterpret_cast<__half2 *>(&q.y) = __floats2half2_rn(v[2], v[3]);
        *reinterpret_cast<uint2 *>(p) = q;
    } else {
        *p = __float2half_rn(v[0]);
    }
}

// V channels of scalar_t kept as stored between a load and a store: fp16 pairs packed in
// __half2 (one register per two values, half the registers of an fp32 channel vector);
// fp32, and single fp16 channels, one value per element. V · sizeof(scalar_t) ≤ 16 bytes,
// aligned to it (the caller's guarantee).
template <int V, bool PAIRS = sizeof(scalar_t) == 2 && V % 2 == 0>
struct Packed {
    scalar_t x[V];
    __device__ __forceinline__ float get(int j) const { return to_f(x[j]); }
    __device__ __forceinline__ void set(int j, float a, float b) {  // channels j and j + 1
        x[j] = from_f<scalar_t>(a);
        if (j + 1 < V) x[j + 1] = from_f<scalar_t>(b);
    }
};
template <int V>
struct Packed<V, true> {
    __half2 h[V / 2];
    __device__ __forceinline__ float get(int j) const {
        return j & 1 ? __high2float(h[j >> 1]) : __low2float(h[j >> 1]);
    }
    __device__ __forceinline__ void set(int j, float a, float b) { h[j >> 1] = __floats2half2_rn(a, b); }
};
template <int V>
__device__ __forceinline__ void load_packed(const scalar_t *p, Packed<V> &v) {
    constexpr int BYTES = V * (int)sizeof(scalar_t);
    if constexpr (BYTES == 16)
        *reinterpret_cast<uint4 *>(&v) = *reinterpret_cast<const uint4 *>(p);
    else if constexpr (BYTES == 8)
        *reinterpret_cast<uint2 *>(&v) = *reinterpret_cast<const uint2 *>(p);
    else
        v.x[0] = *p;  // V == 1 (the only other width the kernels use)
}
template <int V>
__device__ __forceinline__ void store_packed(scalar_t *p, const Packed<V> &v) {
    constexpr int BYTES = V * (int)sizeof(scalar_t);
    if constexpr (BYTES == 16)
        *reinterpret_cast<uint4 *>(p) = *reinterpret_cast<const uint4 *>(&v);
    else if constexpr (BYTES == 8)
        *reinterpret_cast<uint2 *>(p) = *reinterpret_cast<const uint2 *>(&v);
    else
        *p = v.x[0];
}

// Addressing helpers.
__device__ __forceinline__ int off4(int n, int c, int y, int x, int sN, int sC, int sH, int sW) {
    return n * sN + c * sC + y * sH + x * sW;
}
__device__ __forceinline__ int off3(int n, int y, int x, int mN, int mH, int mW) {
    return n * mN + y * mH + x * mW;
}
