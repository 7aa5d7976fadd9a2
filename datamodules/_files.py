"""File-system helpers shared by the datamodules: image scanning, the data cache directory, atomic materialisation."""
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from spanet_pl.errors import MissingPathError, UserInputError

__all__ = [
    'IMG_EXTENSIONS', 'is_image_file', 'list_class_dirs', 'has_image_file', 'list_image_files', 'default_data_dir',
    'materialize_atomically', 'files_by_stem', 'predict_folder', 'predict_images', 'first_names',
]

_logger = logging.getLogger(__name__)

DATA_ENV_VAR = 'SPANET_PL_DATA'


def is_image_file(name: str) -> bool:
    """Whether ``name`` has an extension torchvision's ``ImageFolder`` accepts (case-insensitive)."""
    return has_file_allowed_extension(name, IMG_EXTENSIONS)


def list_class_dirs(split_dir: Path) -> List[str]:
    """Sorted names of the sub-folders of ``split_dir``, exactly as ``ImageFolder.find_classes`` sees them."""
    with os.scandir(split_dir) as it:
        return sorted(entry.name for entry in it if entry.is_dir())


def has_image_file(folder: Path) -> bool:
    """Whether ``folder`` holds at least one image file, at any depth; stops at the first one found.

    Args:
        folder: the folder to search (symlinks followed, as ``ImageFolder`` does).
    """
    pending = [folder]
    while pending:
        subdirs = []
        with os.scandir(pending.pop()) as it:
            for entry in it:
                if entry.is_dir():
                    subdirs.append(entry.path)
                elif is_image_file(entry.name) and entry.is_file():
                    return True
        pending.extend(subdirs)
    return False


def _walk_images(folder: Path) -> Iterator[str]:
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        for name in filenames:
            if is_image_file(name):
                yield os.path.join(dirpath, name)


def list_image_files(folder: Path) -> List[str]:
    """Every image file under ``folder`` (recursive, symlinks followed), as sorted path strings."""
    return sorted(_walk_images(folder))


def first_names(names: Sequence[str], k: int = 5) -> str:
    """The first ``k`` of ``names`` joined for an error message, with a count of the rest."""
    more = f' ... (+{len(names) - k} more)' if len(names) > k else ''
    return ', '.join(names[:k]) + more


def predict_folder(predict_root: Optional[str]) -> Optional[Path]:
    """``predict_root`` as a checked ``Path`` (None stays None); raises ``MissingPathError`` if it is no folder."""
    if not predict_root:
        return None
    path = Path(predict_root).expanduser()
    if not path.is_dir():
        raise MissingPathError(f'predict_root {path} does not exist or is not a folder')
    return path


def predict_images(predict_root: Path) -> List[str]:
    """Every image under ``predict_root`` (recursive, sorted); raises ``UserInputError`` if there is none."""
    paths = list_image_files(predict_root)
    if not paths:
        raise UserInputError(f'predict_root {predict_root} holds no image file ({"/".join(IMG_EXTENSIONS)})')
    return paths


def files_by_stem(folder: Path, accept: Callable[[str], bool]) -> Tuple[Dict[str, str], List[str]]:
    """The files directly inside ``folder`` (not recursive) whose names ``accept`` takes, keyed by name stem.

    Args:
        folder: the folder to list (one ``scandir``; symlinks followed).
        accept: file name → whether to keep it.

    Returns:
        ``({stem: path}, sorted names whose stem was already taken by another accepted file)``.
    """
    by_stem: Dict[str, str] = {}
    duplicates = []
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if not accept(entry.name) or not entry.is_file():
                continue
            stem = os.path.splitext(entry.name)[0]
            if stem in by_stem:
                duplicates.append(entry.name)
            else:
                by_stem[stem] = entry.path
    return by_stem, duplicates


def default_data_dir(name: str) -> Path:
    """The cache folder of an embedded data set: ``$SPANET_PL_DATA/<name>`` or ``~/.cache/spanet_pl/<name>``.

    Args:
        name: the data set's folder name, e.g. ``'digits'``.
    """
    base = os.environ.get(DATA_ENV_VAR)
    return (Path(base) if base else Path.home() / '.cache' / 'spanet_pl').expanduser() / name


def _read_manifest(root: Path, manifest_name: str) -> Optional[Dict]:
    try:
        with open(root / manifest_name) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def materialize_atomically(
        root: Path,
        write: Callable[[Path], Dict],
        manifest_name: str,
        version: int,
        owned_names: tuple,
) -> Dict:
    """Make sure ``root`` holds a complete tree written by ``write``; build it atomically if it does not.

    The tree counts as complete when ``root/manifest_name`` exists and carries ``version``. Otherwise ``write`` fills
    a temporary folder next to ``root``, the manifest (``write``'s return value plus ``version``) is written last and
    the folder is renamed onto ``root``. If another process (a DDP rank) renamed its own tree first, that one is kept.

    Args:
        root: the target folder.
        write: fills the folder it is given and returns the manifest contents (a JSON-serialisable dict).
        manifest_name: file name of the manifest inside ``root``.
        version: layout version; a manifest with another version is rebuilt.
        owned_names: the only entry names ``write`` creates; a stale ``root`` holding anything else is never deleted.

    Returns:
        The manifest of the tree now at ``root``.
    """
    manifest = _read_manifest(root, manifest_name)
    if manifest is not None and manifest.get('version') == version:
        return manifest
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        manifest = _read_manifest(root, manifest_name)
        if manifest is not None and manifest.get('version') == version:
            return manifest  # another process finished it since the first look
        _remove_stale(root, set(owned_names) | {manifest_name})
    tmp = _unique_sibling(root, 'tmp')
    try:
        manifest = dict(write(tmp), version=version)
        with open(tmp / manifest_name, 'w') as f:
            json.dump(manifest, f, indent=1)
        try:
            os.rename(tmp, root)
        except OSError:
            theirs = _read_manifest(root, manifest_name)
            if theirs is None or theirs.get('version') != version:
                raise
            _logger.info('%s was written by another process meanwhile; using it', root)
            return theirs
        _logger.info('materialised %s', root)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _unique_sibling(root: Path, tag: str) -> Path:
    # mkdir (not tempfile.mkdtemp, which makes it 0700) so the cache gets the umask's permissions, shareable.
    path = root.parent / f'.{root.name}-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    path.mkdir()
    return path


def _remove_stale(root: Path, owned: set) -> None:
    entries = {entry.name for entry in os.scandir(root)}
    foreign = sorted(entries - owned)
    if foreign:
        raise FileExistsError(
            f'{root} exists but is not a complete data cache (no valid manifest) and holds other files '
            f'({", ".join(foreign[:5])}); refusing to delete it, choose another root')
    _logger.warning('%s is incomplete or outdated (no valid manifest); rebuilding it', root)
    # Move aside first so that a concurrent reader never sees a half-deleted tree under the real name.
    trash = _unique_sibling(root, 'stale')
    try:
        os.rename(root, trash / root.name)
    except FileNotFoundError:
        pass  # another process removed it first
    shutil.rmtree(trash, ignore_errors=True)
