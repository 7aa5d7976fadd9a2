"""A callback the grid tests put into their runs' config: it holds chosen runs at a training step until the test
releases them, so a test can interrupt, signal or race a run at a known point (after its first ``last.ckpt``)."""
import time
from pathlib import Path

from lightning.pytorch import Callback


class Gate(Callback):
    """At ``step``, a run whose folder name contains ``match`` writes ``<folder>/<run>.waiting`` and waits for
    ``<folder>/release``.

    Args:
        folder: where the markers live.
        match: part of the run's folder (``trainer.default_root_dir``), e.g. ``seed=1``; '' holds every run.
        step: the optimizer step to wait at.
    """

    def __init__(self, folder: str, match: str = '', step: int = 2):
        self.folder, self.match, self.step = Path(folder), match, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        run = Path(trainer.default_root_dir)
        if trainer.global_step != self.step or self.match not in str(run):
            return
        (self.folder / f'{run.parent.name}.{run.name}.waiting').touch()
        while not (self.folder / 'release').exists():
            time.sleep(0.05)
