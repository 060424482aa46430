"""nnunet-ext: domain-robust segmentation methods as nnU-Net v2 trainers.

This module is imported at interpreter start-up (through ``nnunet_ext-autodiscover.pth``), so it must
stay free of heavy imports: no torch, no nnunetv2.
"""

__version__ = "0.1.0"
