"""The model-coverage suites run with one intra-op thread: on a small shared CPU, torch's
thread pool oversubscribes and small convolutions get 4–10× slower."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
