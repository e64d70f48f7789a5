"""``deltaconvert serve``: a converted model on Ray Serve, many streams per replica.

Ray (``pip install 'deltaconvert[serve]'``) is imported only here, and only when this
module is used. The application has one deployment, ``DeltaStreams``:

* each replica owns one GPU (``num_gpus=1``; or CPU threads) and a
  :class:`~deltaconvert.serving.StreamEngine` (a model with ``slots`` streams);
* requests carry a stream id as their Ray Serve *session id*; Ray Serve's
  consistent-hash router maps it to one replica with no fallback replica
  (``num_fallback_replicas=0``), so a stream's frames reach the replica holding its
  state; when replicas come or go the ring changes and some streams land on a new
  replica, which restarts them with a dense frame (the engine's frame-number check
  means a replica never continues from state another replica has since moved past);
* concurrent requests on a replica are batched (``serve.batch``, up to ``slots`` frames,
  waiting at most ``batch_wait_s``) into one call of the model per round.

Python: :class:`StreamClient` (``client.send(stream, frame)``). HTTP: ``POST /`` with an
encoded image (JPEG, PNG) as the body, the stream id in the ``x-session-id`` header and
the frame number in ``x-frame``; ``DELETE /`` with ``x-session-id`` ends a stream.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .serving import FrameReply, FrameRequest

APP_NAME = "deltaconvert"
ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
SESSION_HEADER = "x-session-id"
FRAME_HEADER = "x-frame"


def _deployment_class():
    from ray import serve

    class DeltaStreams:
        """A replica: one model, one StreamEngine (see the module docstring)."""

        def __init__(self, model_path: str, slots: int, device: str, batch_wait_s: float,
                     idle_timeout: float | None, thresholds: str | None) -> None:
            from .serialization import load
            from .serving import StreamEngine
            from .sources import Preprocess
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = load(model_path, device=torch.device(device))
            if thresholds is not None:
                from .thresholds import ThresholdConfig
                ThresholdConfig.from_yaml(thresholds).apply_to(model)
            model.track_stats = False
            context = serve.get_replica_context()
            self.engine = StreamEngine(model, slots, idle_timeout, name=context.replica_id.to_full_id_str())
            self.preprocess = Preprocess.for_model(model)
            self.device = torch.device(device)
            self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                              torch.float32)
            self._batched.set_max_batch_size(slots)
            self._batched.set_batch_wait_timeout_s(batch_wait_s)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def _batched(self, requests: list[FrameRequest]) -> list[Any]:
            return self.engine.run(requests)

        async def step(self, stream: str, frame: int, x: torch.Tensor) -> FrameReply:
            reply = await self._batched(FrameRequest(str(stream), int(frame), x))
            if isinstance(reply, Exception):
                raise reply
            return reply

        async def end(self, stream: str) -> None:
            self.engine.forget(str(stream))

        async def __call__(self, request: Any) -> Any:
            import io

            import numpy as np
            from PIL import Image
            from starlette.responses import JSONResponse
            stream = request.headers.get(SESSION_HEADER)
            if not stream:
                return JSONResponse({"error": f"send the stream id in the {SESSION_HEADER} "
                                              "header"}, status_code=400)
            if request.method == "DELETE":
                self.engine.forget(stream)
                return JSONResponse({"stream": stream, "ended": True})
            try:
                frame = int(request.headers.get(FRAME_HEADER, ""))
                with Image.open(io.BytesIO(await request.body())) as image:
                    rgb = np.asarray(image.convert("RGB"))
            except Exception as error:
                return JSONResponse({"error": f"send an encoded image (JPEG, PNG) as the body and "
                                              f"the frame number (0, 1, …) in the {FRAME_HEADER} "
                                              f"header: {error}"}, status_code=400)
            x = self.preprocess(rgb, self.device, self.dtype).cpu()
            try:
                reply = await self.step(stream, frame, x)
            except Exception as error:
                return JSONResponse({"error": str(error)}, status_code=503)
            return JSONResponse({"stream": stream, "frame": frame, "dense": reply.dense,
                                 "replica": reply.replica, "output": _jsonable(reply.output)})

    return DeltaStreams


def _jsonable(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float().tolist()
    if isinstance(output, dict):
        return {k: _jsonable(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return [_jsonable(v) for v in output]
    return output


def build_app(model_path: str | Path, *, replicas: int = 1, slots: int = 8,
              device: str = "auto", gpus_per_replica: float | None = None,
              cpus_per_replica: float = 1.0, batch_wait_s: float = 0.005,
              idle_timeout: float | None = 300.0, thresholds: str | Path | None = None) -> Any:
    """The Ray Serve application serving ``model_path`` (see the module docstring).

    ``gpus_per_replica`` defaults to 1 when ``device`` is not ``cpu`` and a GPU is
    visible to the caller, else 0.
    """
    from ray import serve
    from ray.serve.config import RequestRouterConfig
    if gpus_per_replica is None:
        gpus_per_replica = 1.0 if device != "cpu" and torch.cuda.is_available() else 0.0
    deployment = serve.deployment(
        _deployment_class(), name="DeltaStreams", num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        max_ongoing_requests=4 * slots,
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER,
            request_router_kwargs={"num_fallback_replicas": 0}))
    return deployment.bind(str(Path(model_path).resolve()), slots, device, batch_wait_s,
                           idle_timeout, None if thresholds is None else str(thresholds))


class StreamClient:
    """Sends frames of streams to a running ``deltaconvert serve`` application.

    Keeps each stream's frame number. A frame whose replica died meanwhile is sent again
    (up to ``retries`` times, ``backoff_s`` apart) until a live replica answers; that
    replica restarts the stream with a dense frame (``reply.dense``).
    """

    def __init__(self, app_name: str = APP_NAME, retries: int = 40, backoff_s: float = 0.25) -> None:
        from ray import serve
        self._handle = serve.get_app_handle(app_name)
        self._frames: dict[str, int] = {}
        self.retries = retries
        self.backoff_s = backoff_s

    def send(self, stream: str, x: torch.Tensor) -> FrameReply:
        """The reply to the next frame ``x`` (one sample) of ``stream``."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError
        frame = self._frames.get(stream, 0)
        handle = self._handle.options(session_id=str(stream))
        for attempt in range(self.retries + 1):
            try:
                reply = handle.step.remote(stream, frame, x.detach().cpu()).result()
                break
            except (RayActorError, BackPressureError, TimeoutError):
                if attempt == self.retries:
                    raise
                time.sleep(self.backoff_s)
        self._frames[stream] = frame + 1
        return reply

    def end(self, stream: str) -> None:
        """End ``stream``: the replica frees its slot; a later frame starts it afresh."""
        self._handle.options(session_id=str(stream)).end.remote(stream).result()
        self._frames.pop(stream, None)
