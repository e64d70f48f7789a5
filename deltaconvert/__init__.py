"""deltaconvert: turn a stock PyTorch CNN into a delta model for fast video inference.

    import deltaconvert
    delta_model = deltaconvert.convert(model)          # caller's model untouched
    for frame in video:
        y = delta_model(frame)                         # frame 0 dense, then deltas

    for result in deltaconvert.stream(delta_model, ["cam1.mp4", "rtsp://cam2/live"]):
        print(result.stream, result.frame, result.work_fraction)
"""
from .convert import DenseFallbackWarning, convert  # noqa: E402
from .delta import Delta  # noqa: E402
from .dense_tail import DenseTailPlan, plan_dense_tail  # noqa: E402
from .errors import (  # noqa: E402
                     BackendUnavailable,
                     CheckpointError,
                     ConfigError,
                     DeltaConvertError,
                     ModelFileError,
                     PoolFull,
                     SequenceMismatch,
                     TraceFailure,
                     UnknownArchitecture,
                     UnsupportedOp,
                     VideoError,
)
from .graph.registry import register_delta_op, register_leaf_module  # noqa: E402
from .model import DeltaGraphModule  # noqa: E402
from .predict import Result, stream  # noqa: E402
from .serialization import load, save  # noqa: E402
from .streams import StreamPool  # noqa: E402
from .thresholds import ThresholdConfig, load_thresholds  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "__version__",
    "convert", "save", "load", "DeltaGraphModule", "Delta", "ThresholdConfig", "load_thresholds",
    "plan_dense_tail", "DenseTailPlan",
    "stream", "Result", "StreamPool", "PoolFull",
    "register_delta_op", "register_leaf_module", "DenseFallbackWarning",
    "DeltaConvertError", "TraceFailure", "UnsupportedOp", "SequenceMismatch", "ConfigError",
    "CheckpointError", "BackendUnavailable", "ModelFileError", "VideoError",
    "UnknownArchitecture",
]
