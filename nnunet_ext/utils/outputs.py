"""Output locations checked before a command computes anything, so a bad ``-o`` fails in a second, not an hour.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_output_folder(folder / "report") == folder / "report"
    True
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from nnunet_ext.utils.atomic import atomic_path, write_json_atomic, write_text_atomic


def check_output_folder(path: str | os.PathLike, option: str = "-o") -> Path:
    """Refuse an output folder that cannot be created or written; create nothing that stays.

    The folder may exist or not; the nearest existing folder on its path must accept a new entry, which is
    tried by creating and removing a hidden temporary folder there (permission bits alone do not tell, e.g.
    for root on a read-only mount).

    Args:
        path: the output folder.
        option: how the user passed it (``-o``, ``--output``), used in the messages.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` is an existing file, lies below a file, or its nearest existing folder is not
            writable; the message names the path and the fix.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is an existing file, not a folder; pass a folder path (it is created if "
                         "missing) or move the file away")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, so no folder can be created below it; pass a folder "
                         f"path that is not inside {existing}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nnext-write-check-", dir=existing))
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot create anything in {existing} ({e.strerror or e}); pass a folder "
                         f"you can write to, or give yourself write permission on {existing}") from None
    return path


def write_result_files(folder: str | os.PathLike, stem: str, data: Any, markdown: str, png: bytes,
                       option: str = "-o") -> dict[str, Path]:
    """Write a result as ``STEM.json``, ``STEM.md`` and ``STEM.png`` into ``folder``, each atomically.

    Render the Markdown and the figure first (a rendering error then writes nothing). The folder is checked
    with :func:`check_output_folder` and created if missing.

    Returns:
        ``{"json": path, "md": path, "png": path}``.
    """
    folder = check_output_folder(folder, option)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "png": folder / f"{stem}.png"}
    write_json_atomic(paths["json"], data)
    write_text_atomic(paths["md"], markdown)
    with atomic_path(paths["png"]) as tmp:
        tmp.write_bytes(png)
    return paths
