"""Re-exports every trainer of :mod:`nnunet_ext.trainers` for nnU-Net's trainer lookup.

nnU-Net imports the modules of the folders in ``nnUNet_extTrainer`` as top-level modules; this folder
holds only this module, so class identity and pickling keep the real ``nnunet_ext.trainers`` paths.
nnU-Net's lookup asks ``hasattr(module, name)``: names of budget trainers (``<trainer>_<budget>Budget
[_seed<N>]``) are answered by :func:`nnunet_ext.trainers.budget.resolve_budget_trainer`.
Do not add other files to this folder.
"""

from nnunet_ext.trainers import *  # noqa: F401,F403
from nnunet_ext.trainers.budget import resolve_budget_trainer


def __getattr__(name: str) -> type:
    cls = resolve_budget_trainer(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
