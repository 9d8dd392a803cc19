"""pytest configuration shared by the tilesparse Python tests."""
import os

import pytest
import torch

try:  # `make deps` installs hypothesis; a bare GPU machine may lack it (its property tests then fail to import)
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover
    settings = None

# Property tests: modest example counts (the whole suite must stay a few
# minutes on a 2-core CPU), no per-example deadline (first calls compile or
# warm up kernels). TILESPARSE_HYPOTHESIS_PROFILE=thorough runs more examples.
if settings is not None:
    settings.register_profile("default", max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", max_examples=300, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("TILESPARSE_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (reproducible failures)."""
    torch.manual_seed(0)
    yield
