"""Checkpoint files: loaded without running code from them, written atomically.

A ``.pth`` file is a pickle: ``torch.load(..., weights_only=False)`` (what nnU-Net's trainer and predictor
do) runs whatever callable the file names, so a model folder from someone else can execute code on the
machine that loads it. :func:`load_checkpoint_safely` uses torch's restricted unpickler
(``weights_only=True``) and allows, beyond tensors and plain Python values, only the numpy globals nnU-Net
checkpoints contain (numpy scalars such as ``_best_ema`` and the logged pseudo-Dice values, and their
dtypes). The allow-list is applied with ``torch.serialization.safe_globals`` for the one call, never
process-wide.

:func:`save_torch_atomic` writes to a temporary file beside the target and renames it into place, so a
run killed while saving leaves the previous file intact instead of a truncated one.

No nnunetv2 import: usable from every layer that reads or writes checkpoints.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunet_ext.utils.atomic import atomic_path

#: the spelling of numpy's scalar reconstructor in pickles written with numpy 1.x and with numpy 2.x
_SCALAR_PATHS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # "Unsupported global: GLOBAL x.y ...", "unsupported GLOBAL x.y whose ..."


def _numpy_scalar_reconstructor():
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return core.multiarray.scalar


def numpy_safe_globals() -> list[Any]:
    """The numpy globals a checkpoint may name: scalar reconstructor, ``numpy.dtype``, dtype classes, number types.

    Returns:
        Entries for ``torch.serialization.safe_globals``: objects, and ``(object, "dotted.path")`` pairs for
        the scalar reconstructor under both numpy spellings.
    """
    scalar = _numpy_scalar_reconstructor()
    entries: list[Any] = [(scalar, path) for path in _SCALAR_PATHS]
    entries.append(np.dtype)
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype (Float64DType, ...)
    if dtypes is not None:
        entries += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    entries += sorted({t for t in np.sctypeDict.values() if issubclass(t, (np.number, np.bool_))},
                      key=lambda t: t.__name__)
    return entries


def load_checkpoint_safely(path: str | os.PathLike, map_location: Any = None) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and the numpy allow-list; never run its code.

    Args:
        path: checkpoint file (``checkpoint_final.pth``, ``checkpoint_latest.pth``, ...).
        map_location: as for ``torch.load`` (e.g. ``"cpu"`` or the trainer's device).

    Returns:
        The checkpoint dict.

    Raises:
        ValueError: the file does not exist, is truncated or corrupt, is not a dict, or names a global outside
            the allow-list (the message names the file and the refused global).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist (or is not a file); check the model folder and fold")
    registered = set(torch.serialization.get_safe_globals())  # leave entries someone registered for good alone
    try:
        with torch.serialization.safe_globals([g for g in numpy_safe_globals() if g not in registered]):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_globals(path, str(e))
        if refused is None:
            raise ValueError(f"checkpoint {path} is corrupt ({_first_line(e)}); re-create it (train again or copy "
                             f"the model folder again)") from None
        raise ValueError(f"refused to load checkpoint {path}: it needs {refused}, which is not a type nnU-Net "
                         f"checkpoints contain (tensors, numbers, strings, numpy scalars), and loading it could run "
                         f"code. Only load model folders you trust; if you trust this one, find out what wrote "
                         f"{refused} into it and re-save the checkpoint without it") from None
    except Exception as e:  # noqa: BLE001 -- truncated zip, bad pickle opcodes, ...: all mean a corrupt file
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({_first_line(e)}); re-create it (train again "
                         f"or copy the model folder again)") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected the dict nnU-Net writes; "
                         f"point at a checkpoint_*.pth file of an nnU-Net model folder")
    return checkpoint


def refuse_unsafe_checkpoints(paths: Iterable[str | os.PathLike]) -> None:
    """Load every checkpoint as :func:`load_checkpoint_safely` does, only to refuse the ones it refuses.

    Call it before a model folder goes to nnU-Net's ``nnUNetPredictor.initialize_from_trained_model_folder``,
    which unpickles checkpoints with ``weights_only=False``: a checkpoint carrying code is then refused here,
    before nnU-Net would run it. Costs one extra load per file.

    Raises:
        ValueError: a file is missing, damaged or carries more than weights and plain values (named).
    """
    for path in paths:
        load_checkpoint_safely(path, map_location="cpu")


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to a temporary file beside ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and an existing ``path`` is left unchanged.

    Args:
        obj: what to save (a checkpoint dict).
        path: target file; its folder must exist.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _refused_globals(path: Path, message: str) -> str | None:
    """The global(s) torch's restricted unpickler refused, or None when the error is not a refusal."""
    found = _REFUSED_GLOBAL.search(message)
    if found:
        return found.group(1)
    if "unrecognized function" not in message and "Can only create new object" not in message:
        return None
    allowed = set(_SCALAR_PATHS) | {f"{g.__module__}.{g.__qualname__}" for g in numpy_safe_globals()
                                     if not isinstance(g, tuple)}
    try:
        unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):
        unsafe = []
    return ", ".join(unsafe) if unsafe else _first_line(message)


def _first_line(error: BaseException | str) -> str:
    """The informative line of an error: torch wraps unpickler errors in lines of general advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and not line.startswith(("Weights only", "Check "))]
    detail = lines[0] if lines else ""
    return detail if isinstance(error, str) else f"{type(error).__name__}: {detail}".rstrip(": ")
