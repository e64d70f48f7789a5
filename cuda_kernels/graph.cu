// Control of a captured delta frame (backends/cuda/frame_skip.py).
//
// With the frame skip on, a captured frame is: the frame's zeroing, the model's input
// Sparsify kernels, set_frame_condition, then an IF node whose body is every other op
// of the frame. The Sparsify kernels set `changed` (zeroed with the frame) when they
// emit a pixel; a frame in which no input pixel changed emits nothing anywhere (every
// op's candidates derive from its input's mask), so its body would change no state and
// rewrite every output with the value it already holds: the replay skips it.
#include "common.cuh"

// The IF node runs its body iff an input pixel changed this frame or `force` is set
// (the first replay after a capture, whose outputs no replay has written yet, and the
// first after a state change outside the graph); clears `force`. One thread.
extern "C" __global__ void set_frame_condition(unsigned long long handle, const int *changed, int *force) {
    DC_GRID_START();
    cudaGraphSetConditional((cudaGraphConditionalHandle)handle, (*changed != 0 || *force != 0) ? 1u : 0u);
    *force = 0;
}
