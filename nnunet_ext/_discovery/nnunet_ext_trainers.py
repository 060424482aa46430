"""Re-exports every trainer of :mod:`nnunet_ext.trainers` for nnU-Net's trainer lookup.

nnU-Net imports the modules of the folders in ``nnUNet_extTrainer`` as top-level modules; this folder
holds only this module, so class identity and pickling keep the real ``nnunet_ext.trainers`` paths.
Do not add other files to this folder.
"""

from nnunet_ext.trainers import *  # noqa: F401,F403
