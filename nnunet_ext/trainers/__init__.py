"""nnU-Net trainers of nnunet-ext: thin nnUNetTrainer subclasses, one module per method.

This is the only package that imports ``nnunetv2.training``. Every class exported here is found by the
stock ``nnUNetv2_train`` / ``nnUNetv2_predict`` by name (see :mod:`nnunet_ext._autodiscover`); names are
unique ``nnUNetTrainer<Method>[_<setting>]`` without ``__``.
"""

from nnunet_ext.trainers.budget import CPUBudgetMixin, nnUNetTrainerCPU_demo, nnUNetTrainerCPU_smoke

__all__ = ["CPUBudgetMixin", "nnUNetTrainerCPU_demo", "nnUNetTrainerCPU_smoke"]
