"""nnU-Net trainers of nnunet-ext: thin nnUNetTrainer subclasses, one module per method.

This is the only package that imports ``nnunetv2.training``. Every class exported here is found by the
stock ``nnUNetv2_train`` / ``nnUNetv2_predict`` by name (see :mod:`nnunet_ext._autodiscover`); names are
unique ``nnUNetTrainer<Method>[_<setting>]`` without ``__``. Each module lists its public names once, in its
``__all__``; this package re-exports exactly those of :data:`MODULES` (a new method module joins the list).
Budget trainers (``<trainer>_<budget>Budget[_seed<N>]``) are made on demand, see
:mod:`nnunet_ext.trainers.budget`.
"""

from nnunet_ext.trainers import (
    avagrad,
    budget,
    catenorm,
    continual_baselines,
    fourier_mst,
    gin,
    odex,
    site_adaptation,
    stream,
    style_consistency,
    style_curriculum,
)

#: the modules whose ``__all__`` make up this package's namespace
MODULES = (budget, avagrad, catenorm, fourier_mst, stream, continual_baselines, odex, style_curriculum, gin,
           style_consistency, site_adaptation)


def _exports(modules) -> dict[str, object]:
    names: dict[str, object] = {}
    for module in modules:
        for name in module.__all__:
            if name in names and names[name] is not getattr(module, name):
                raise ImportError(f"{module.__name__} exports {name!r}, which another trainer module exports too; "
                                  f"trainer names must be unique")
            names[name] = getattr(module, name)
    return names


_EXPORTS = _exports(MODULES)
globals().update(_EXPORTS)
__all__ = list(_EXPORTS)
