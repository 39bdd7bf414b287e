"""The files a DatasetBuild reads, found from ``spec.source``. Standard library only: ``kubetune run``'s
up-to-date check and the operator image find them too, without the readers' dependencies (pypdf, pyarrow)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from kubetune.api.v1alpha1.datasetbuild import SourceSpec

_DATASETS_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")


def is_datasets_folder(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any((path / marker).is_file() for marker in _DATASETS_MARKERS)


def _expand(path: Path, include: list[str]) -> list[Path]:
    """The inputs under a folder: files matching ``include`` and ``datasets`` folders (not descended into)."""
    if is_datasets_folder(path):
        return [path]
    found: list[Path] = []
    for child in sorted(path.iterdir()):
        if child.is_dir():
            found.extend(_expand(child, include))
        elif child.is_file() and any(fnmatch.fnmatch(child.name, pat) for pat in include):
            found.append(child)
    return found


def find_files(source: SourceSpec, strict: bool = True) -> list[Path]:
    """The inputs named by ``source.paths`` in a stable order: files as given, folders expanded through
    ``source.include``. A ``datasets`` folder is one input whatever ``include`` says. A path that does not exist
    raises, or is passed over when not ``strict``."""
    found: list[Path] = []
    for i, raw in enumerate(source.paths):
        path = Path(raw)
        if path.is_dir():
            found.extend(_expand(path, source.include))
        elif path.is_file():
            found.append(path)
        elif strict:
            raise FileNotFoundError(f"spec.source.paths[{i}]: {raw!r} is neither a file nor a folder")
    return found
