"""The CPU runtime flushes subnormal floats, which otherwise made late CPU epochs three times slower."""
import pytest
import torch

from utils.dist import setup


def test_cpu_setup_flushes_subnormal_floats_to_zero() -> None:
    subnormal = torch.finfo(torch.float32).tiny / 4
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    try:
        assert torch.tensor([subnormal]).mul(1.0).item() > 0
        setup("cpu")
        assert torch.tensor([subnormal]).mul(1.0).item() == 0.0
        assert torch.tensor([2 * torch.finfo(torch.float32).tiny]).mul(1.0).item() > 0
    finally:
        torch.set_flush_denormal(False)
