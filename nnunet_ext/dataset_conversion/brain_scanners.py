"""``brain_scanners``: many simulated subjects imaged on six simulated scanners, with exact tissue labels.

Every subject (:mod:`~nnunet_ext.dataset_conversion.brain_subjects`: a random smooth deformation of the
MNI152 2009a tissue maps; label = argmax of the deformed maps, 0 background, 1 CSF, 2 GM, 3 WM) is imaged
on every scanner of :data:`SCANNERS`, named like CC-359's vendor x field grid (the domain names of
:mod:`~nnunet_ext.dataset_conversion.cc359`). **Every domain is simulated**; the vendor names say which
vendor's usual T1-weighted protocol family is imitated, not that a vendor's reconstruction is reproduced.

A scanner images a subject by physics, not filters (:mod:`nnunet_ext.core.mr_signal`):

1. the protocol's signal equation (MPRAGE-like and TFE-like inversion-prepared gradient echo, 3D SPGR,
   2D spin echo) on the tissue values of its field strength (:data:`~nnunet_ext.core.mr_signal.TISSUES`),
   mixed by the tissue fractions of each voxel (partial volume);
2. times a smooth receive-bias field (:func:`~nnunet_ext.core.mr_signal.receive_bias`), stronger at 3 T;
3. acquisition: along the slice axis, a Gaussian slice profile of the slice thickness and sampling at the
   slice spacing when the slices are thicker than the output voxels (cornucopia's
   ``LowResSliceFinalTransform``); Rician noise (:func:`~nnunet_ext.core.mr_signal.rician_noise`) at the
   acquired resolution, ``sigma = S_WM / SNR``; then interpolation back to the output grid. Acquired voxels
   finer than the output grid (every in-plane resolution here, and the slices of the 3D protocols) are
   represented by the output grid's own resolution: the tissue maps are anti-aliased to it;
4. times the vendor's intensity scale (arbitrary units).

Each image jitters its protocol a little (:data:`JITTER`: TR, TE, TI and flip angle by up to 3 %, noise
level by up to 10 %, receiver gain by up to 5 %, a random phase of the bias field's standing wave). Every
parameter, the jittered values of every image and the tissue table with its sources are recorded in
``domains.json``.

Subjects are split once (:func:`~nnunet_ext.dataset_conversion.splits.holdout_subjects`, seeded): a third
are test subjects, a quarter of the rest validation subjects (24 subjects: 12 train, 4 val, 8 test). Test
subjects' images (every scanner) go to ``imagesTs``/``labelsTs``, train and val subjects' to
``imagesTr``/``labelsTr``; ``domains.json`` gives each case its domain, subject and ``subset``.
``splits_final.json`` holds one single-source fold per scanner
(:func:`~nnunet_ext.dataset_conversion.splits.single_source_folds`): fold ``k`` trains on scanner ``k``'s
train subjects and validates on its val subjects; ``nnUNetv2_plan_and_preprocess`` copies it into
``$nnUNet_preprocessed`` (or :func:`~nnunet_ext.dataset_conversion.splits.install_splits` afterwards).
Validation subjects are for choosing hyper-parameters, test subjects only for the final evaluation.

Not modelled: skull, scalp, fat, vessels and flow; magnetisation transfer; B1 transmit non-uniformity
beyond what the bias field stands for; gradient non-linearity and B0 distortion; motion and other
artefacts; k-space sampling, parallel imaging and vendor reconstruction filters; the template's own
cut-off below z = -72 mm (the brainstem ends there).

>>> write_brain_scanners(Path("/tmp/raw/Dataset992_DemoBrainScanners"), profile="tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from nnunet_ext.core.mr_signal import (
    TISSUE_SOURCES,
    TISSUES,
    mprage_signal,
    partial_volume_signal,
    receive_bias,
    rician_noise,
    spgr_signal,
    spin_echo_signal,
)
from nnunet_ext.dataset_conversion import brain_subjects
from nnunet_ext.dataset_conversion.common import CaseOut, DatasetSpec, check_id_unused, fingerprint, write_dataset
from nnunet_ext.dataset_conversion.demo_slabs import check_profile, check_seed
from nnunet_ext.dataset_conversion.demo_sources import MNI_LICENCE, MNI_REFERENCE, mni_files
from nnunet_ext.dataset_conversion.splits import holdout_subjects, single_source_folds
from nnunet_ext.domains import DomainMetadata, load_domains

logger = logging.getLogger(__name__)

Sequence = Literal["mprage", "spgr", "spin_echo"]
LABELS = {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}
#: world axes of the slice direction
AXIS_NAMES = ("x (sagittal slices)", "y (coronal slices)", "z (axial slices)")
#: share of all subjects held out for testing, and of the others for validation
TEST_SHARE, VAL_SHARE = 1 / 3, 1 / 4


@dataclass(frozen=True)
class Scanner:
    """One simulated scanner (protocol, acquisition, hardware).

    Attributes:
        vendor: the vendor whose usual protocol family is imitated.
        field_t: field strength (selects the tissue table).
        sequence: signal equation.
        family: the protocol family's usual name (MPRAGE, TFE, SPGR, SE).
        protocol: keyword arguments of the signal equation (times in ms, flip angle in degrees).
        description: protocol in words.
        voxel_mm: acquired voxel size along world x, y, z.
        slice_axis: world axis of the slice (or partition) direction.
        snr: white-matter signal over the noise sd per acquired voxel.
        bias: keyword arguments of :func:`~nnunet_ext.core.mr_signal.receive_bias` (without ``phase``).
        scale: intensity units per unit signal.
    """

    vendor: str
    field_t: float
    sequence: Sequence
    family: str
    protocol: dict[str, float]
    description: str
    voxel_mm: tuple[float, float, float]
    slice_axis: int
    snr: float
    bias: dict[str, Any]
    scale: float

    def tissue_signals(self, protocol: dict[str, float] | None = None) -> dict[str, float]:
        """Signal of pure CSF, GM and WM with ``protocol`` (default: the nominal one)."""
        equation = {"mprage": mprage_signal, "spgr": spgr_signal, "spin_echo": spin_echo_signal}[self.sequence]
        kwargs = dict(self.protocol if protocol is None else protocol)
        if "readouts" in kwargs:
            kwargs["readouts"] = int(kwargs["readouts"])
        out = {}
        for name, t in TISSUES[self.field_t].items():
            relaxation = t.t2_ms if self.sequence == "spin_echo" else t.t2s_ms
            out[name] = float(equation(t.pd, t.t1_ms, relaxation, **kwargs))
        return out


_MPRAGE = "MPRAGE-like inversion-prepared 3D gradient echo, linear k-space ordering"
_TFE = "TFE-like 3D turbo field echo with an inversion prepulse, long shot interval"
#: the six simulated scanners (domain name -> scanner); names as the CC-359 converter's domains
SCANNERS: dict[str, Scanner] = {
    "siemens_15": Scanner(
        "siemens", 1.5, "mprage", "MPRAGE",
        {"tr": 2400.0, "ti": 1000.0, "te": 3.6, "flip_deg": 8.0, "echo_spacing": 8.6, "readouts": 160, "centre": 0.5},
        _MPRAGE, (1.2, 1.25, 1.25), 0, 22.0,
        {"radial": 0.08, "gradient": (0.0, 0.04, 0.03), "wave": 0.03, "wave_vector": (0.0, 0.0, 1.0)}, 9000.0),
    "siemens_3": Scanner(
        "siemens", 3.0, "mprage", "MPRAGE",
        {"tr": 2300.0, "ti": 900.0, "te": 2.98, "flip_deg": 9.0, "echo_spacing": 7.1, "readouts": 176, "centre": 0.5},
        _MPRAGE, (1.0, 1.0, 1.0), 0, 35.0,
        {"radial": 0.22, "gradient": (0.03, 0.08, 0.05), "wave": 0.08, "wave_vector": (0.0, 1.0, 1.0)}, 15000.0),
    "ge_15": Scanner(
        "ge", 1.5, "spin_echo", "SE", {"tr": 500.0, "te": 14.0},
        "2D T1-weighted spin echo, 5 mm contiguous axial slices", (0.94, 0.94, 5.0), 2, 18.0,
        {"radial": 0.06, "gradient": (0.0, 0.05, -0.04), "wave": 0.02, "wave_vector": (1.0, 0.0, 0.0)}, 2500.0),
    "ge_3": Scanner(
        "ge", 3.0, "spgr", "SPGR", {"tr": 11.0, "te": 4.2, "flip_deg": 18.0},
        "3D spoiled gradient echo (SPGR), axial partitions", (1.0, 1.0, 1.4), 2, 30.0,
        {"radial": 0.25, "gradient": (-0.04, 0.1, 0.0), "wave": 0.1, "wave_vector": (1.0, 0.0, 1.0)}, 30000.0),
    "philips_15": Scanner(
        "philips", 1.5, "mprage", "TFE",
        {"tr": 2500.0, "ti": 800.0, "te": 3.7, "flip_deg": 8.0, "echo_spacing": 8.1, "readouts": 176, "centre": 0.5},
        _TFE, (1.2, 1.0, 1.0), 0, 20.0,
        {"radial": 0.07, "gradient": (0.02, -0.03, 0.05), "wave": 0.03, "wave_vector": (0.0, 1.0, 0.0)}, 12000.0),
    "philips_3": Scanner(
        "philips", 3.0, "mprage", "TFE",
        {"tr": 3000.0, "ti": 1000.0, "te": 3.7, "flip_deg": 8.0, "echo_spacing": 8.1, "readouts": 224, "centre": 0.5},
        _TFE, (1.0, 1.0, 1.0), 0, 32.0,
        {"radial": 0.2, "gradient": (0.05, -0.06, 0.08), "wave": 0.1, "wave_vector": (1.0, 1.0, 0.0)}, 22000.0),
}

#: per-image jitter: relative half-ranges of uniform factors, and the bias phase range (radians)
JITTER: dict[str, Any] = {"protocol_times_and_flip": 0.03, "noise_sigma": 0.10, "gain": 0.05,
                          "bias_phase": [0.0, 2 * math.pi]}
_JITTERED = ("tr", "te", "ti", "flip_deg")


@dataclass(frozen=True)
class BrainScannersProfile:
    """Size of the dataset.

    Attributes:
        spacing_mm: isotropic output voxel size.
        subjects: default number of subjects.
    """

    spacing_mm: float
    subjects: int


#: ``default``: 2 mm, 24 subjects; ``tiny``: tests (4 mm, in-plane at most 64 x 64 voxels, 6 subjects)
PROFILES: dict[str, BrainScannersProfile] = {
    "default": BrainScannersProfile(spacing_mm=2.0, subjects=24),
    "tiny": BrainScannersProfile(spacing_mm=4.0, subjects=6),
}
MIN_SUBJECTS = 4


def assign_subsets(subjects: list[str], seed: int) -> dict[str, str]:
    """Subject -> ``"train"``, ``"val"`` or ``"test"`` (:data:`TEST_SHARE` test, :data:`VAL_SHARE` of the rest
    val), seeded."""
    test = holdout_subjects(subjects, TEST_SHARE, seed)
    val = holdout_subjects([s for s in subjects if s not in test], VAL_SHARE, seed + 1)
    return {s: "test" if s in test else "val" if s in val else "train" for s in subjects}


@dataclass
class Acquisition:
    """The jittered settings of one image (recorded per case in ``domains.json``).

    Attributes:
        protocol: the scanner's protocol with TR, TE, TI and flip angle jittered.
        noise_sigma: Rician noise sd (signal units).
        gain: receiver gain factor on top of the scanner's scale.
        bias_phase: phase of the bias field's standing wave.
        noise_seed: seed of the image's noise.
    """

    protocol: dict[str, float]
    noise_sigma: float
    gain: float
    bias_phase: float
    noise_seed: int

    def record(self) -> dict[str, Any]:
        def rounded(v: Any) -> Any:
            return round(v, 6) if isinstance(v, float) else {k: rounded(x) for k, x in v.items()} if isinstance(
                v, dict) else v

        return rounded(asdict(self))


def draw_acquisition(scanner: Scanner, rng: np.random.Generator) -> Acquisition:
    """One image's jittered settings (:data:`JITTER`) drawn with ``rng``."""
    j = JITTER["protocol_times_and_flip"]
    protocol = {k: (v * (1 + rng.uniform(-j, j)) if k in _JITTERED else v) for k, v in scanner.protocol.items()}
    sigma = scanner.tissue_signals()["wm"] / scanner.snr * (1 + rng.uniform(-JITTER["noise_sigma"], JITTER["noise_sigma"]))
    return Acquisition(protocol, float(sigma), float(1 + rng.uniform(-JITTER["gain"], JITTER["gain"])),
                        float(rng.uniform(*JITTER["bias_phase"])), int(rng.integers(2**31)))


def _slice_model(scanner: Scanner, spacing_mm: float) -> dict[str, Any]:
    """How the slice direction is simulated at the output spacing."""
    thickness = scanner.voxel_mm[scanner.slice_axis]
    return {"slice_axis": AXIS_NAMES[scanner.slice_axis], "slice_thickness_mm": thickness,
            "slice_spacing_mm": thickness, "simulated_slice_resolution_mm": max(thickness, spacing_mm),
            "coarser_than_output": thickness > spacing_mm}


def image_subject(subject: brain_subjects.Subject, scanner: Scanner, acquisition: Acquisition,
                  template: brain_subjects.Template) -> np.ndarray:
    """One subject imaged on one scanner: float32 ``(z, y, x)`` on the output grid (see the module docstring)."""
    from cornucopia import LowResSliceFinalTransform
    from cornucopia.base import FinalTransform

    signals = scanner.tissue_signals(acquisition.protocol)
    signal = partial_volume_signal(subject.tissue[1:], torch.tensor([signals[t] for t in ("csf", "gm", "wm")]))
    grid = template.output
    u = (grid.points() - torch.as_tensor(template.centre, dtype=torch.float32)) / template.radius_mm
    signal = signal * receive_bias(u, phase=acquisition.bias_phase, **scanner.bias)
    generator = torch.Generator().manual_seed(acquisition.noise_seed)

    class _Rician(FinalTransform):
        def _xform(self, x: torch.Tensor) -> torch.Tensor:
            return rician_noise(x, acquisition.noise_sigma, generator)

    model = _slice_model(scanner, grid.spacing_mm)
    if model["coarser_than_output"]:
        acquire = LowResSliceFinalTransform(axis=2 - scanner.slice_axis, resolution=model["slice_spacing_mm"]
                                            / grid.spacing_mm, thickness=1.0, noise=_Rician())
        signal = acquire(signal[None])[0]
    else:
        signal = _Rician()(signal[None])[0]
    return (signal * scanner.scale * acquisition.gain).clamp(min=0).numpy().astype(np.float32)


def _scanner_record(name: str, scanner: Scanner, spacing_mm: float, seed: int) -> dict[str, Any]:
    signals = scanner.tissue_signals()
    return {
        "vendor": scanner.vendor, "field_t": scanner.field_t, "sequence": scanner.sequence, "family": scanner.family,
        "protocol": dict(scanner.protocol), "protocol_description": scanner.description,
        "acquired_voxel_mm": list(scanner.voxel_mm), **_slice_model(scanner, spacing_mm),
        "snr_wm": scanner.snr, "noise": "Rician (magnitude of complex Gaussian), sigma = S_WM / snr_wm",
        "receive_bias": {"formula": "exp(radial (|u|^2 - 1/2) + gradient . u + wave sin(pi wave_vector . u + "
                                    "phase)), u = (position - brain centre) / brain radius",
                         **{k: list(v) if isinstance(v, tuple) else v for k, v in scanner.bias.items()}},
        "intensity_scale": scanner.scale,
        "tissues": {t: asdict(v) for t, v in TISSUES[scanner.field_t].items()},
        "tissue_sources": TISSUE_SOURCES,
        "nominal_tissue_signal": {t: round(v, 6) for t, v in signals.items()},
        "wm_over_gm": round(signals["wm"] / signals["gm"], 4),
        "jitter": JITTER, "seed": seed, "domain_name": name,
    }


def _population(volumes: dict[str, dict[str, float]]) -> dict[str, float]:
    brain = np.array([v["brain_ml"] for v in volumes.values()])
    ventricles = np.array([v["ventricles_ml"] for v in volumes.values()])
    asymmetry = np.array([v["asymmetry_index"] for v in volumes.values()])
    return {"subjects": len(volumes), "brain_ml_mean": round(float(brain.mean()), 1),
            "brain_ml_cv": round(float(brain.std(ddof=1) / brain.mean()), 4) if len(brain) > 1 else 0.0,
            "ventricles_ml_min": round(float(ventricles.min()), 2), "ventricles_ml_max": round(float(ventricles.max()), 2),
            "ventricles_max_over_min": round(float(ventricles.max() / ventricles.min()), 3),
            "asymmetry_index_sd": round(float(asymmetry.std(ddof=1)), 4) if len(asymmetry) > 1 else 0.0,
            "asymmetry_index_max_abs": round(float(np.abs(asymmetry).max()), 4)}


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch and SimpleITK on one thread inside the block: results that do not depend on the thread count (the
    same seed gives the same bytes) and no slowdown on a machine whose cores are shared."""
    import SimpleITK as sitk

    threads, itk_threads = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)


@dataclass
class _SubjectCache:
    """Generates each subject once, when its first case is written (cases are ordered by subject), and records
    it in ``meta.subjects`` and the population summary in ``population``, which the dataset writer saves after
    the last case."""

    template: brain_subjects.Template
    params: dict[str, brain_subjects.SubjectParameters]
    subset: dict[str, str]
    meta: DomainMetadata
    population: dict[str, float]
    report: Callable[[str], None]
    volumes: dict[str, dict[str, float]] = field(default_factory=dict)
    current: tuple[str, brain_subjects.Subject] | None = None

    def get(self, name: str) -> brain_subjects.Subject:
        if self.current is None or self.current[0] != name:
            self.report(f"subject {len(self.volumes) + 1}/{len(self.params)} ({name}): deforming the template, "
                        f"imaging on {len(SCANNERS)} scanners")
            subject = brain_subjects.make_subject(self.template, self.params[name])
            self.volumes[name] = subject.volumes(self.template.output)
            self.meta.subjects[name] = {"subset": self.subset[name], "deformation": self.params[name].record(),
                                        "volumes": self.volumes[name]}
            self.population.update(_population(self.volumes))
            self.current = (name, subject)
        return self.current[1]


def write_brain_scanners(
    target: Path,
    *,
    seed: int = 0,
    profile: str = "default",
    subjects: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the ``brain_scanners`` dataset into ``target`` (see the module docstring).

    Args:
        target: the dataset folder ``<raw_root>/DatasetXXX_DemoBrainScanners``.
        seed: seed of the subjects, the subsets and every image's jitter and noise.
        profile: a key of :data:`PROFILES`.
        subjects: number of subjects (>= :data:`MIN_SUBJECTS`; default: the profile's).
        overwrite: replace an existing dataset folder.
        progress: called with a short message at each step.

    Returns:
        ``target``.

    Raises:
        ValueError: bad ``seed``, ``profile`` or ``subjects``.
        FileExistsError: the folder exists and ``overwrite`` is False, or another dataset uses the id.
        RuntimeError: nilearn's MNI152 files are not installed (the message says how to install them).
    """
    check_seed(seed)
    check_profile(profile, PROFILES)
    settings = PROFILES[profile]
    count = settings.subjects if subjects is None else subjects
    if isinstance(count, bool) or not isinstance(count, int) or count < MIN_SUBJECTS:
        raise ValueError(f"subjects must be an integer >= {MIN_SUBJECTS} (train, val and test subjects are needed), "
                         f"got {subjects!r}; pass e.g. --subjects 24")
    files = mni_files()
    check_id_unused(target, "--id")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists. Remove it or pass overwrite=True (--overwrite).")
    with _one_thread():
        return _write(target, files, seed, profile, count, overwrite, progress or (lambda message: None))


def _write(target: Path, files: dict[str, Path], seed: int, profile: str, count: int, overwrite: bool,
           report: Callable[[str], None]) -> Path:
    settings = PROFILES[profile]
    report(f"preparing the MNI152 tissue maps for {settings.spacing_mm:g} mm")
    template = brain_subjects.prepare_template(tuple(files.items()), settings.spacing_mm)
    names = [f"s{i:02d}" for i in range(count)]
    params = {n: brain_subjects.sample_subject(np.random.default_rng([seed, 0, i])) for i, n in enumerate(names)}
    subset = assign_subsets(names, seed)
    meta = DomainMetadata()
    population: dict[str, float] = {}
    cache = _SubjectCache(template, params, subset, meta, population, report)
    affine = template.output.ras_affine()
    for name, scanner in SCANNERS.items():
        meta.add_domain(name, f"simulated {scanner.vendor} {scanner.field_t:g} T scanner: {scanner.description}",
                        simulated=True, **_scanner_record(name, scanner, settings.spacing_mm, seed))
    cases = []
    for i, subject_name in enumerate(names):
        for k, (domain, scanner) in enumerate(SCANNERS.items()):
            acquisition = draw_acquisition(scanner, np.random.default_rng([seed, 1, i, k]))

            def load(problems, subject_name=subject_name, scanner=scanner, acquisition=acquisition):
                subject = cache.get(subject_name)
                array = image_subject(subject, scanner, acquisition, template)
                return [array.transpose(2, 1, 0)], subject.labels().transpose(2, 1, 0), affine, {}

            cases.append(CaseOut(f"{domain}_{subject_name}", "test" if subset[subject_name] == "test" else "train",
                                 domain, subject_name, load,
                                 {"subset": subset[subject_name], "acquisition": acquisition.record()}))
    training = [c for c in cases if c.split == "train"]
    folds = single_source_folds({c.case_id: c.domain for c in training}, {c.case_id: c.subject for c in training},
                                {c.case_id: c.extra["subset"] for c in training}, list(SCANNERS))
    options = {"seed": seed, "profile": profile, "subjects": count, "spacing_mm": settings.spacing_mm}
    spec = DatasetSpec(
        target=target, channel_names={"0": "T1"}, labels=dict(LABELS), meta=meta,
        description=(
            f"Simulated multi-subject, multi-scanner brain MRI (nnunet_ext.dataset_conversion.brain_scanners): "
            f"{count} subjects, each a random smooth deformation of the MNI152 2009a tissue maps (labels = argmax "
            f"of the deformed maps: 0 background, 1 CSF, 2 GM, 3 WM), each imaged on {len(SCANNERS)} simulated "
            f"scanners (signal equations, literature tissue values, receive bias, slice profile, Rician noise, "
            f"vendor scale). Every domain is simulated. Subjects are split into train/val/test; splits_final.json "
            f"has one single-source fold per scanner. See domains.json for every parameter."),
        reference=MNI_REFERENCE, licence=MNI_LICENCE, converter="brain_scanners", options=options,
        digest=fingerprint("brain_scanners", options, files.values(), Path(next(iter(files.values()))).parent),
        splits=folds, record={"scanners": list(SCANNERS), "subsets": subset, "population": population})
    write_dataset(spec, cases, overwrite=overwrite)
    logger.info("wrote %s: %d subjects x %d scanners; %s", target, count, len(SCANNERS), population)
    return target


def single_source_splits(folder: str | Path) -> list[dict[str, list[str]]]:
    """The single-source folds of a ``brain_scanners`` dataset, from its ``domains.json`` (fold ``k`` =
    ``k``-th simulated domain; equal to its ``splits_final.json``).

    Raises:
        ValueError: the dataset's training cases carry no ``subset``.
    """
    meta = load_domains(folder)
    training = {c: m for c, m in meta.cases.items() if m["split"] == "train"}
    missing = sorted(c for c, m in training.items() if "subset" not in m)
    if missing:
        raise ValueError(f"{folder}: training cases without 'subset' in domains.json, e.g. {missing[:3]}; this is "
                         f"not a dataset written by nnext demo-data brain-scanners")
    return single_source_folds({c: m["domain"] for c, m in training.items()},
                               {c: m["subject"] for c, m in training.items()},
                               {c: m["subset"] for c, m in training.items()},
                               [d for d in meta.domains if meta.cases_of(d, "train")])
