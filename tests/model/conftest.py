import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is faster, and on a busy 2-core machine two OpenMP
    threads spin against each other (measured 25 ms vs 690 ms per step). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
