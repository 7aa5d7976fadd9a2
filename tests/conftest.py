import pytest
import torch

import spanet_pl  # noqa: F401  (registers the variants with timm)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


NANO_VARIANTS = ('spanet_nano', 'spanetv2_nano_pure', 'spanetv2_nano_hybrid')


COLOUR_CHANNEL = {'red': 0, 'green': 1, 'blue': 2}


def colour_image_tree(root, classes, counts, noise: int = 80, boost: int = 150):
    """A real ImageFolder tree (``root/{train,val}/<class>/*.png``) whose classes differ in colour.

    Args:
        classes: colour names ('red', 'green', 'blue'); each class lifts its own RGB channel by ``boost``.
        counts: images per class for (train, val).
        noise: pixel noise drawn uniformly from [0, noise).
    """
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in zip(('train', 'val'), counts):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, noise, (36, 36, 3))
                pixels[..., COLOUR_CHANNEL[name]] += boost
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{name}_{i}.png')
    return root
