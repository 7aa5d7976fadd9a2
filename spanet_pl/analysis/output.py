"""Where an analysis writes: PNG figures and CSV tables, all-or-nothing.

Files go to a hidden staging folder inside ``--out`` and are moved into place only when the analysis finishes, so a
failed or interrupted run leaves the folder as it was.
"""
import csv
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np
from PIL import Image

__all__ = ['Output', 'safe_name']


def safe_name(label: str) -> str:
    """A label as a file-name fragment: letters, digits and ``.=,+-`` kept, every other run of characters ``_``."""
    return re.sub(r'[^\w.=,+-]+', '_', label).strip('_') or 'model'


class Output:
    """Collects an analysis' files in ``folder`` (created) and moves them in together on ``commit()``."""

    def __init__(self, folder: str):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.staging = self.folder / f'.partial-{uuid.uuid4().hex[:8]}'
        self.staging.mkdir()
        self.names: List[str] = []

    def _path(self, name: str) -> Path:
        if name in self.names:
            raise ValueError(f'{name} written twice')
        self.names.append(name)
        return self.staging / name

    def figure(self, fig, name: str, palette: bool = False) -> None:
        """Save a matplotlib figure as ``name`` (PNG) and close it; ``palette`` stores it with 256 colours (pictures
        with heat-map overlays: a third of the size)."""
        import matplotlib.pyplot as plt
        path = self._path(name)
        fig.savefig(path, bbox_inches='tight')
        plt.close(fig)
        if palette:
            with Image.open(path) as image:
                image = image.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            image.save(path, optimize=True)

    def image(self, pixels: np.ndarray, name: str) -> None:
        """Save an (H, W, 3) uint8 picture as ``name``."""
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(self._path(name))

    def table(self, rows: Iterable[Dict], name: str, fields: Sequence[str]) -> None:
        """Write ``rows`` (dicts) as CSV with the given columns."""
        with open(self._path(name), 'w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})

    def commit(self) -> List[Path]:
        """Move every file into ``folder`` and return their final paths."""
        final = []
        for name in self.names:
            target = self.folder / name
            os.replace(self.staging / name, target)
            final.append(target)
        shutil.rmtree(self.staging, ignore_errors=True)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> 'Output':
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.discard()
