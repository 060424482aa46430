"""The registry of demo datasets: every dataset ``nnext demo-data`` can build offline, with its default id.

A demo dataset is built from data that ships inside installed packages (nothing is downloaded). Each
:class:`DemoDataset` entry of :data:`DEMO_DATASETS` names its default nnU-Net dataset id, its folder name,
its builder, its availability check and a one-line description; the ``nnext demo-data`` and ``nnext demo``
commands, the tests and the benchmarks read ids and folders from here.

* ``mni_tissue`` (id 990, ``Dataset990_DemoMNITissue``): grey/white matter of the MNI152 template, axial
  slabs of one brain, TorchIO simulated-scanner test domains
  (:mod:`~nnunet_ext.dataset_conversion.demo_slabs`).
* ``colin_skullstrip`` (id 991, ``Dataset991_DemoColinSkullStrip``): brain mask of the Colin27 head, axial
  slabs of one head, the same simulated-scanner domains (needs Debian's mricron-data).
* ``brain_scanners`` (id 992, ``Dataset992_DemoBrainScanners``): 24 simulated subjects (deformed MNI152
  tissue maps, exact CSF/GM/WM labels) imaged on 6 simulated scanners made by MR physics, subject-disjoint
  train/val/test subsets and one single-source fold per scanner
  (:mod:`~nnunet_ext.dataset_conversion.brain_scanners`).

The building blocks live beside this module: template files, loading and resampling in
:mod:`~nnunet_ext.dataset_conversion.demo_sources`; the TorchIO artefacts of the slab datasets in
:mod:`~nnunet_ext.dataset_conversion.demo_artefacts`; writing the slab datasets in
:mod:`~nnunet_ext.dataset_conversion.demo_slabs`. The names below stay importable from here.

>>> folder = build_demo_dataset("mni_tissue", 990, "/tmp/nnUNet_raw", profile="tiny")  # doctest: +SKIP
>>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
['dataset.json', 'domains.json', 'imagesTr', 'imagesTs', 'labelsTr', 'labelsTs']
>>> demo_dataset("mni-tissue").folder(990, "/tmp/nnUNet_raw").name
'Dataset990_DemoMNITissue'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nnunet_ext.dataset_conversion import brain_scanners, demo_slabs
from nnunet_ext.dataset_conversion.demo_artefacts import SEVERITIES, simulate_scanner
from nnunet_ext.dataset_conversion.demo_slabs import PROFILES, DemoProfile
from nnunet_ext.dataset_conversion.demo_sources import MRICRON_TEMPLATES, colin_files, mni_files

__all__ = [
    "DEMO_DATASETS", "MRICRON_TEMPLATES", "PROFILES", "SEVERITIES", "DemoDataset", "DemoName", "DemoProfile",
    "ProfileName", "available_demo_datasets", "build_demo_dataset", "demo_dataset", "demo_dataset_folder",
    "simulate_scanner",
]

DemoName = Literal["mni_tissue", "colin_skullstrip"]
ProfileName = Literal["demo", "tiny"]


@dataclass(frozen=True)
class DemoDataset:
    """One demo dataset: where it goes, how to build it and whether it can be built here.

    Attributes:
        name: registry key (``mni_tissue``); the CLI spells it with dashes (:attr:`cli_name`).
        default_id: nnU-Net dataset id used when none is given.
        folder_suffix: folder name after ``DatasetXXX_``.
        description: one line for help texts and ``nnext doctor``.
        profiles: size profiles the builder accepts; the first is the default.
        options: dataset-specific keyword options of :meth:`build` (e.g. ``severities``).
        sources: returns the source files; raises ``RuntimeError`` naming the install command when they are
            missing.
        writer: ``writer(target, *, seed, profile, overwrite, progress, **options) -> Path``.
    """

    name: str
    default_id: int
    folder_suffix: str
    description: str
    profiles: tuple[str, ...]
    options: tuple[str, ...]
    sources: Callable[[], dict[str, Path]]
    writer: Callable[..., Path]

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    @property
    def default_profile(self) -> str:
        return self.profiles[0]

    def folder(self, dataset_id: int, raw_root: str | Path) -> Path:
        """``<raw_root>/Dataset{dataset_id:03d}_<folder_suffix>``.

        Raises:
            ValueError: ``dataset_id`` outside 1..999.
        """
        if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
            raise ValueError(
                f"dataset_id must be an integer in 1..999 (nnU-Net's three-digit dataset id), got {dataset_id!r}; "
                f"pass e.g. --id {self.default_id}"
            )
        return Path(raw_root) / f"Dataset{dataset_id:03d}_{self.folder_suffix}"

    def unavailable(self) -> str | None:
        """``None`` if the source files are installed, else the reason and the install command."""
        try:
            self.sources()
        except RuntimeError as e:
            return str(e)
        return None

    def build(
        self,
        dataset_id: int | None,
        raw_root: str | Path,
        *,
        seed: int = 0,
        profile: str | None = None,
        overwrite: bool = False,
        progress: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Path:
        """Write the dataset into ``raw_root`` (atomically: a failed build leaves no folder behind).

        Args:
            dataset_id: nnU-Net dataset id (``None``: :attr:`default_id`).
            raw_root: nnU-Net raw folder (``$nnUNet_raw``); created if missing.
            seed: seed of everything random in the dataset.
            profile: one of :attr:`profiles` (``None``: the first).
            overwrite: replace an existing dataset folder of the same name.
            progress: called with a short message at each step (``nnext demo-data`` prints them).
            **options: the dataset's :attr:`options`.

        Returns:
            The dataset folder.

        Raises:
            ValueError: bad id, profile or option (names the accepted values).
            FileExistsError: the folder exists and ``overwrite`` is False, or another dataset uses the id.
            RuntimeError: the source data is not installed (the message says how to install it).
        """
        target = self.folder(self.default_id if dataset_id is None else dataset_id, raw_root)
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name} takes no option(s) {unknown}; its options are {list(self.options)}")
        return self.writer(target, seed=seed, profile=self.default_profile if profile is None else profile,
                           overwrite=overwrite, progress=progress, **options)


def _slab_writer(name: str) -> Callable[..., Path]:
    def write(target: Path, **kwargs: Any) -> Path:
        return demo_slabs.write_slab_dataset(name, target, **kwargs)

    return write


#: every demo dataset, by registry name (CLI names use dashes)
DEMO_DATASETS: dict[str, DemoDataset] = {
    "mni_tissue": DemoDataset(
        name="mni_tissue", default_id=990, folder_suffix="DemoMNITissue",
        description="grey/white matter of the MNI152 template, axial slabs of one brain, TorchIO scanner domains",
        profiles=("demo", "tiny"), options=("severities",), sources=mni_files, writer=_slab_writer("mni_tissue"),
    ),
    "colin_skullstrip": DemoDataset(
        name="colin_skullstrip", default_id=991, folder_suffix="DemoColinSkullStrip",
        description="brain mask of the Colin27 head, axial slabs of one head, TorchIO scanner domains",
        profiles=("demo", "tiny"), options=("severities",), sources=colin_files,
        writer=_slab_writer("colin_skullstrip"),
    ),
    "brain_scanners": DemoDataset(
        name="brain_scanners", default_id=992, folder_suffix="DemoBrainScanners",
        description="simulated subjects x 6 simulated scanners (MR physics), exact CSF/GM/WM labels, "
                    "single-source folds",
        profiles=tuple(brain_scanners.PROFILES), options=("subjects",), sources=mni_files,
        writer=brain_scanners.write_brain_scanners,
    ),
}


def demo_dataset(name: str) -> DemoDataset:
    """The registry entry named ``name`` (registry spelling ``mni_tissue`` or CLI spelling ``mni-tissue``).

    Raises:
        ValueError: unknown name (lists the known ones).
    """
    key = name.replace("-", "_")
    if key not in DEMO_DATASETS:
        raise ValueError(f"name must be one of {sorted(DEMO_DATASETS)}, got {name!r}")
    return DEMO_DATASETS[key]


def available_demo_datasets() -> dict[str, str | None]:
    """Which demo datasets can be built here.

    Returns:
        Dataset name -> ``None`` if its source files are installed, else the reason and the install command.
    """
    return {name: entry.unavailable() for name, entry in DEMO_DATASETS.items()}


def demo_dataset_folder(name: str, dataset_id: int, raw_root: str | Path) -> Path:
    """The folder a demo dataset is written to, e.g. ``<raw_root>/Dataset990_DemoMNITissue``.

    Raises:
        ValueError: unknown ``name`` or ``dataset_id`` outside 1..999.
    """
    return demo_dataset(name).folder(dataset_id, raw_root)


def build_demo_dataset(
    name: DemoName,
    dataset_id: int,
    raw_root: str | Path,
    seed: int = 0,
    profile: ProfileName = "demo",
    severities: Sequence[str] = tuple(SEVERITIES),
    overwrite: bool = False,
) -> Path:
    """Write a slab demo nnU-Net raw dataset with real and simulated-scanner test domains.

    See :mod:`~nnunet_ext.dataset_conversion.demo_slabs` for sources, labels, slabs and artefacts; other demo
    datasets are built with ``DEMO_DATASETS[name].build(...)``.

    Args:
        name: ``"mni_tissue"`` (grey/white matter, MNI152) or ``"colin_skullstrip"`` (brain mask, Colin27).
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: nnU-Net raw folder (``$nnUNet_raw``); created if missing.
        seed: seed of the simulated-scanner artefacts (source-domain cases do not depend on it).
        profile: ``"demo"`` or ``"tiny"``, see :data:`PROFILES`.
        severities: keys of :data:`SEVERITIES`; one shifted test domain each. May be empty.
        overwrite: replace an existing dataset folder of the same name.

    Returns:
        The dataset folder ``<raw_root>/Dataset{dataset_id:03d}_DemoMNITissue`` or ``..._DemoColinSkullStrip``.

    Raises:
        ValueError: bad ``name``, ``dataset_id``, ``seed``, ``profile`` or ``severities``.
        FileExistsError: the folder exists and ``overwrite`` is False, or another dataset uses ``dataset_id``.
        RuntimeError: the source data is not installed (the message says how to install it).
    """
    if name not in demo_slabs.SLAB_SPECS:
        raise ValueError(f"name must be one of {sorted(demo_slabs.SLAB_SPECS)}, got {name!r}")
    return DEMO_DATASETS[name].build(dataset_id, raw_root, seed=seed, profile=profile, overwrite=overwrite,
                                     severities=severities)
