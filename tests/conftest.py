import pytest
import torch

import spanet_pl  # noqa: F401  (registers the variants with timm)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


NANO_VARIANTS = ('spanet_nano', 'spanetv2_nano_pure', 'spanetv2_nano_hybrid')
