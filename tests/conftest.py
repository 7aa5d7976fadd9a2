import logging

import pytest
import torch

import spanet_pl  # noqa: F401  (registers the variants with timm)
# Lightning gives its loggers a StreamHandler bound to the sys.stderr of the moment and stops their propagation
# when it is imported before logging is set up. Imported here, then put back to plain propagation, so pytest's
# log capture sees its lines (caplog) and no handler keeps a stream that a finished test's capsys closed (that
# wrote a '--- Logging error ---' traceback into a later test's stderr).
import lightning.pytorch  # noqa: F401,E402

for _name in ('lightning.pytorch', 'lightning.fabric'):
    _log = logging.getLogger(_name)
    for _handler in [h for h in _log.handlers if type(h) is logging.StreamHandler]:
        _log.removeHandler(_handler)
    _log.propagate = True


@pytest.fixture(scope='session', autouse=True)
def _one_intra_op_thread():
    # the tests' tensors are small and the two cores are shared (with a second pytest, a DDP peer, a grid job):
    # OpenMP threads that spin for a busy core make a test several times slower than one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where CUDA is unavailable (``slow`` ones are deselected by ``-m``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


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


ADE_W, ADE_H = 48, 36
# Raw ADE20K-style annotation value → RGB painted under it: 1..3 are classes 0..2 after reduce_zero_label, 0 ignored.
ADE_COLOURS = {0: (20, 230, 20), 1: (128, 128, 128), 2: (230, 20, 20), 3: (20, 20, 230)}


def ade20k_scene(width: int = ADE_W, height: int = ADE_H):
    """``(uint8 RGB image, uint8 raw labels)``: an ignored strip on top, background 1, a red square of 2 on the left,
    a blue one of 3 on the right, one 255 pixel in the bottom-right corner."""
    import numpy as np
    labels = np.ones((height, width), dtype=np.uint8)
    labels[:3] = 0
    labels[8:24, 4:20] = 2
    labels[14:30, 28:44] = 3
    labels[height - 1, width - 1] = 255
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for value, colour in ADE_COLOURS.items():
        image[labels == value] = colour
    image[labels == 255] = (0, 0, 0)
    return image, labels


def write_ade20k_pair(base, split: str, name: str, size=(ADE_W, ADE_H), image=None, labels=None):
    """Write ``base/images/<split>/<name>.jpg`` and, unless ``labels`` is None while ``image`` is given,
    ``base/annotations/<split>/<name>.png``; return the image path."""
    from PIL import Image
    if image is None:
        image, labels = ade20k_scene(*size)
    (base / 'images' / split).mkdir(parents=True, exist_ok=True)
    (base / 'annotations' / split).mkdir(parents=True, exist_ok=True)
    path = base / 'images' / split / f'{name}.jpg'
    Image.fromarray(image).save(path, quality=95)
    if labels is not None:
        Image.fromarray(labels, mode='L').save(base / 'annotations' / split / f'{name}.png')
    return path


def ade20k_tree(base):
    """``base`` (an ``ADEChallengeData2016`` folder) with 4 training 48x36 scenes and 2 validation ones, the second
    transposed (36x48); returns ``base``."""
    for i in range(4):
        write_ade20k_pair(base, 'training', f'ADE_train_{i:08d}')
    write_ade20k_pair(base, 'validation', 'ADE_val_00000000')
    image, labels = ade20k_scene()
    write_ade20k_pair(base, 'validation', 'ADE_val_00000001', image=image.transpose(1, 0, 2).copy(),
                      labels=labels.T.copy())
    return base


def cli_trainer_config(save_dir, name: str = 'run', **overrides) -> dict:
    """The ``trainer`` section of a CPU test config: TensorBoard logs in ``save_dir/name``, no progress bar."""
    return {
        'accelerator': 'cpu', 'devices': 1, 'max_epochs': 2, 'log_every_n_steps': 1,
        'enable_progress_bar': False, 'enable_model_summary': False,
        'logger': {'class_path': 'lightning.pytorch.loggers.TensorBoardLogger',
                   'init_args': {'save_dir': str(save_dir), 'name': name}},
        **overrides,
    }
