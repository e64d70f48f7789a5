"""timm CNN families at threshold 0 (CPU): each architecture converts, its dense islands
are the listed ones, and every frame of a synthetic video matches the original.

Random weights with BatchNorm statistics calibrated on the clip. The bound is relative
to the model's own floating-point noise (the float32 original against itself in
float64: random-init networks can amplify rounding by orders of magnitude), and the
same conversion in float64 must match the float64 original to ~1e-10 — the delta math
itself, free of float32 noise. Small inputs (64×64, batch 2, 3 frames) keep the suite
within a few minutes. With ``DELTACONVERT_REPORT`` set each test appends its numbers.
"""
from __future__ import annotations

import pytest
import torch

from deltaconvert.architectures import calibrate_batch_norm
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import matches_original, report

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'deltaconvert[dev]')")

FRAMES, SIZE, BATCH = 3, 64, 2
NOISE_FACTOR, NOISE_FLOOR = 10.0, 1e-6  # float32: error ≤ 10·noise + 1e-6
EXACT = 1e-10  # float64

# One or more architectures per family; the comment names what each brings.
TIMM_MODELS = (
    "efficientnet_b0",                   # BatchNormAct2d, squeeze-excite
    "tf_efficientnet_b0",                # Conv2dSame: padding resolved for the input size
    "tf_mobilenetv3_small_minimal_100",  # tf_* family
    "tf_mixnet_s",                       # mixed kernels + Conv2dSame
    "mixnet_s",                          # mixed depthwise kernels (split along channels)
    "mobilenetv3_small_050",             # hard-swish, SE
    "mobilenetv2_050",
    "mobilenetv4_conv_small",            # UIR blocks
    "regnetx_002",
    "regnety_002",                       # RegNet with SE
    "cs3darknet_s",                      # CSP
    "darknet17",                         # Darknet
    "dla46_c",                           # DLA: tree aggregation
    "hrnet_w18_small",                   # HRNet: multi-resolution fusion
    "nf_resnet26",                       # NFNet: ScaledStdConv2d (weight standardisation)
    "nf_regnet_b0",                      # NF-RegNet
    "resnest14d",                        # ResNeSt: split attention
    "rexnet_100",                        # ReXNet
    "ghostnet_100",                      # GhostNet: cheap operations + cat
    "convnext_atto",                     # ConvNeXt: channels-last LayerNorm
    "fbnetc_100",
    "lcnet_050",
    "dpn48b",                            # dual path
    "resnet18d",
    "seresnext26d_32x4d",
    "ese_vovnet19b_dw",                  # VoVNet: one-shot aggregation, eSE
    "selecsls42b",
    "repvgg_a0",                         # RepVGG: unfused parallel branches
    "gernet_s",
    "skresnet18",                        # selective kernel: stack + attention + sum
    "tinynet_e",
    "hardcorenas_a",
    "spnasnet_100",
    "semnasnet_050",
    "resnetv2_18",                       # pre-activation ResNet; 'same' stem: MaxPool2dSame
)
# Constructor arguments beyond the defaults: the 'same' stem pads with −∞ before its max
# pool, on a map that is not yet rectified (a zero border would win there).
MODEL_ARGS: dict[str, dict] = {"resnetv2_18": {"stem_type": "same"}}

# Dense islands that remain (none: split attention's channel groups, resnest and
# skresnet, become channel ops).
ISLANDS: dict[str, int] = {}


def test_coverage_targets():
    """≥ 90 % of the architectures convert without a dense island."""
    clean = sum(ISLANDS.get(name, 0) == 0 for name in TIMM_MODELS)
    assert len(TIMM_MODELS) >= 25
    assert clean / len(TIMM_MODELS) >= 0.9, f"{clean}/{len(TIMM_MODELS)} without dense islands"


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_model_matches_original(name):
    frames = synthetic_video(FRAMES, SIZE, SIZE, batch=BATCH, seed=1)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **MODEL_ARGS.get(name, {}))
    model = calibrate_batch_norm(model, frames)
    result = matches_original(model, frames)
    islands = result["dense_islands"]
    report({"source": "timm", "model": name, "dense_islands": len(islands),
            "max_rel_error": result["error"], "fp32_vs_fp64_noise": result["noise"],
            "max_rel_error_fp64": result["error64"], "frames": FRAMES,
            "input": [BATCH, 3, SIZE, SIZE]})
    listing = "\n".join(f"  {node}: {why}" for node, why in islands.items())
    assert len(islands) == ISLANDS.get(name, 0), f"dense islands:\n{listing}"
    assert result["change"] > 1e-3, "the original's output ignores the input"
    assert result["error"] <= NOISE_FACTOR * result["noise"] + NOISE_FLOOR, result
    assert result["error64"] <= EXACT, result
