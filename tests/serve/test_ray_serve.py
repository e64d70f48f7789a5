"""The Ray Serve application on a real local Ray cluster (CPU, loopback only, no mocks):
concurrent clients streaming different clips get exactly each stream's outputs run
alone; killing a replica mid-stream restarts its streams with a dense frame and no error
reaches any client; the HTTP endpoint answers and ends streams.

Marked ``ray`` (deselect with ``-m "not ray"``); about a minute in all."""
from __future__ import annotations

import io
import os
import socket
import threading
import urllib.request

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from deltaconvert.serialization import save  # noqa: E402
from deltaconvert.serve import APP_NAME, StreamClient, build_app  # noqa: E402
from deltaconvert.streams import StreamPool  # noqa: E402
from deltaconvert.synthetic import synthetic_video  # noqa: E402
from deltaconvert.testing import converted_small_net  # noqa: E402

pytestmark = pytest.mark.ray
SLOTS, FRAMES, STREAMS = 4, 6, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.delta.pt"
    save(converted_small_net(thresholds=0.02), path)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(path, replicas=2, slots=SLOTS, device="cpu", cpus_per_replica=0.5,
                            batch_wait_s=0.01), name=APP_NAME, route_prefix="/")
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def clips():
    return {f"cam{s}": synthetic_video(FRAMES, 24, 32, batch=1, seed=s) for s in range(STREAMS)}


def alone(clip, restarts=()) -> list[torch.Tensor]:
    """One stream through a pool of the replicas' size, restarted at ``restarts``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a replica with one CPU
    try:
        pool = StreamPool(converted_small_net(thresholds=0.02), SLOTS)
        outs = []
        for t, x in enumerate(clip):
            if t in restarts and "s" in pool:
                pool.release("s")
            outs.append(pool.step({"s": x})["s"])
        return outs
    finally:
        torch.set_num_threads(threads)


def stream_all(clips, frames: range, replies: dict, barrier: threading.Barrier | None = None):
    errors = []

    def client(name):
        try:
            sender = StreamClient()
            for t in frames:
                if barrier is not None and t == frames.start:
                    barrier.wait(timeout=60)
                replies[name].append(sender.send(name, clips[name][t]))
        except BaseException as error:  # reported below, not swallowed
            errors.append((name, error))

    threads = [threading.Thread(target=client, args=(name,)) for name in clips]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors


def check_against_alone(clips, replies):
    for name, got in replies.items():
        restarts = [t for t, reply in enumerate(got) if reply.dense]
        assert restarts[0] == 0
        for t, (reply, want) in enumerate(zip(got, alone(clips[name], restarts))):
            torch.testing.assert_close(reply.output, want, rtol=1e-6, atol=1e-7,
                                       msg=f"{name} frame {t}")


def test_concurrent_clients_get_each_stream_alone(app, clips):
    replies = {name: [] for name in clips}
    stream_all(clips, range(FRAMES), replies)
    for name, got in replies.items():
        assert [r.dense for r in got] == [True] + [False] * (FRAMES - 1), name
        assert len({r.replica for r in got}) == 1, f"{name} moved between replicas"
    check_against_alone(clips, replies)
    client = StreamClient()
    for name in clips:
        client.end(name)


def test_killing_a_replica_restarts_its_streams_cleanly(app, clips):
    replies = {name: [] for name in clips}
    stream_all(clips, range(3), replies)
    victim = replies["cam0"][-1].replica
    on_victim = {n for n, got in replies.items() if got[-1].replica == victim}
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    stream_all(clips, range(3, FRAMES), replies)
    for name, got in replies.items():
        assert len(got) == FRAMES
        if name in on_victim:
            assert got[3].dense and got[3].replica != victim, name
    check_against_alone(clips, replies)
    client = StreamClient()
    for name in clips:
        client.end(name)


def test_http_endpoint(app, clips):
    from PIL import Image
    port = app

    def post(stream: str, frame: int, image: np.ndarray) -> dict:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=buffer.getvalue(),
                                         method="POST", headers={"x-session-id": stream,
                                                                 "x-frame": str(frame)})
        import json
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    first = post("web", 0, image)
    second = post("web", 1, np.roll(image, 1, axis=1))
    assert first["dense"] and not second["dense"] and first["replica"] == second["replica"]
    assert np.asarray(second["output"]).shape == (1, 4, 12, 16)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", method="DELETE",
                                     headers={"x-session-id": "web"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert b'"ended":true' in response.read().replace(b" ", b"")
