// Control of a captured delta frame (backends/cuda/frame_skip.py).
//
// With the frame skip on, a captured frame is: the frame's zeroing, the model's input
// Sparsify kernels, set_frame_condition, then a SWITCH node with the rest of the frame
// as its branches: 0 the delta frame, 1 (when captured) the model's dense restart. The
// Sparsify kernels add the pixels they emit to `changed` (zeroed with the frame). A
// frame in which no input pixel changed emits nothing anywhere (every op's candidates
// derive from its input's mask), so its delta branch would change no state and rewrite
// every output with the value it already holds: the replay takes no branch. A frame in
// which at least `restart_at` input pixels changed (a scene cut) costs the delta branch
// more than the dense one, which restarts the sequence at this frame.
#include "common.cuh"

enum FrameBranch : unsigned { DELTA_FRAME = 0u, DENSE_RESTART = 1u, SKIP_FRAME = 2u };

// Picks the branch: none when no input pixel changed and `force` is clear, else the dense
// restart when `restart_at` > 0 and at least that many input pixels changed, else the
// delta frame. `force` (set at capture — no replay has written the outputs yet — and
// after state changes outside the graph) is cleared. One thread.
extern "C" __global__ void set_frame_condition(unsigned long long handle, const int *changed, int *force,
                                               int restart_at) {
    DC_GRID_START();
    const int pixels = *changed;
    unsigned branch = DELTA_FRAME;
    if (pixels == 0 && *force == 0) branch = SKIP_FRAME;
    else if (restart_at > 0 && pixels >= restart_at) branch = DENSE_RESTART;
    cudaGraphSetConditional((cudaGraphConditionalHandle)handle, branch);
    *force = 0;
}
