"""Tiny models run these tests on one torch thread: at width 32 a second thread only adds synchronisation, and on a
busy machine two spinning threads per process slow a test several times over."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
