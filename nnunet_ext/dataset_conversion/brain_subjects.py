"""Simulated subjects: random smooth deformations of the MNI152 2009a tissue probability maps.

A subject is the template's background / CSF / grey-matter / white-matter probability maps
(:func:`~nnunet_ext.dataset_conversion.demo_sources.mni_tissue_probabilities`; CSF = brain mask minus GM
minus WM) pulled back through one random deformation onto the output grid. Its label is the argmax of the
deformed maps on that grid (0 background, 1 CSF, 2 GM, 3 WM), so the ground truth is exact for the
simulated anatomy.

The deformation maps an output point ``y`` (world mm) to the template point it is read from:

1. **elastic**: ``y + u(y)``, ``u`` the scaling-and-squaring exponential (cornucopia's
   ``utils.warps.exp_velocity``, 7 steps, on a 17^3 grid, then interpolated) of a stationary velocity field
   trilinearly interpolated from a 5 x 5 x 5 lattice of normal values (sd :data:`ELASTIC_SD_MM` per axis)
   spanning the field of view, made mirror-symmetric across the midline except for
   :data:`ELASTIC_ANTISYMMETRY` of its antisymmetric part: a smooth, invertible, low-frequency shape change
   of a few millimetres, similar in both hemispheres;
2. **affine**: the inverse of ``x -> c + R Sh diag(s) (x - c) + t`` (per-axis scale ``s = g a_i`` with a
   global factor ``g`` and per-axis factors ``a_i``, rotation ``R`` about the three axes, small shear
   ``Sh``, translation ``t``; ``c`` the template brain's centre on its midline);
3. **left/right asymmetry**: ``x_lr -> x_lr (1 - h tanh(x_lr / 10 mm))``, which enlarges the left
   hemisphere (world ``+x``, LPS) by about ``h`` and shrinks the right one by as much (``h < 0``: the
   opposite), smoothly across the midline;
4. **ventricles**: ``x -> x + v grad S(x)`` with ``S`` the lateral-ventricle region of the template
   (the largest connected component of ``p_CSF > 0.5`` in a box around the centre of the brain) smoothed
   with a Gaussian of :data:`VENTRICLE_SIGMA_MM`. For ``v > 0`` points near the ventricles read from
   closer to them, so the ventricles expand and the periventricular tissue is compressed; ``v < 0``
   shrinks them. A documented simpler equivalent of a local expansion of the CSF around the lateral
   ventricles.

The random parameters (:func:`sample_subject`, :data:`VARIATION`) give the volumes recorded per subject
(:meth:`Subject.volumes`): a coefficient of variation of the brain (GM + WM) volume near 10 %, lateral
ventricle volumes varying by about a factor of two across subjects, hemispheric asymmetry of a few percent
at most. The measured values of each build are in its ``domains.json`` (``subjects``) and in the
documentation. The template is brain only: no skull, scalp, dura or vessels are simulated.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from nnunet_ext.dataset_conversion.demo_sources import mni_tissue_probabilities

#: margin around the template brain in the output field of view (room for scaling and pose), mm
FOV_MARGIN_MM = 12.0
#: sd of the elastic velocity at the control points, mm per axis
ELASTIC_SD_MM = 2.0
ELASTIC_CONTROL_POINTS = 5
#: share of the elastic velocity's part that is antisymmetric across the midline (the rest is mirror-symmetric)
ELASTIC_ANTISYMMETRY = 0.3
#: points per axis of the grid the elastic velocity is integrated on (then interpolated to the output grid)
ELASTIC_INTEGRATION_POINTS = 17
#: scaling-and-squaring steps of the elastic velocity's exponential
ELASTIC_STEPS = 7
#: smoothing of the ventricle region whose gradient pushes the ventricle walls, mm
VENTRICLE_SIGMA_MM = 4.0
#: box (world LPS mm, MNI coordinates) that contains the lateral ventricles and no sulcal CSF
VENTRICLE_BOX_MM = ((-30.0, 30.0), (-30.0, 50.0), (-5.0, 35.0))
ASYMMETRY_WIDTH_MM = 10.0

#: distributions of the subject parameters: (kind, *arguments), truncated at ``limit`` (absolute)
VARIATION: dict[str, dict[str, Any]] = {
    "log_global_scale": {"distribution": "normal", "sd": 0.032, "limit": 0.08},
    "log_axis_scale": {"distribution": "normal", "sd": 0.02, "limit": 0.05},
    "rotation_deg": {"distribution": "normal", "sd": 3.0, "limit": 7.5},
    "shear": {"distribution": "normal", "sd": 0.015, "limit": 0.04},
    "translation_mm": {"distribution": "normal", "sd": 2.0, "limit": 5.0},
    "lr_asymmetry": {"distribution": "normal", "sd": 0.005, "limit": 0.0125},
    "ventricle_push_mm2": {"distribution": "uniform", "low": -14.0, "high": 26.0},
}


@dataclass(frozen=True)
class Grid:
    """A voxel grid in world (LPS) coordinates, axis order x, y, z; direction as the template's.

    Attributes:
        shape: voxels along x, y, z.
        spacing_mm: isotropic voxel size.
        origin: world position of voxel (0, 0, 0).
        direction: 3 x 3 direction cosines (columns = voxel axes), flattened row-major.
    """

    shape: tuple[int, int, int]
    spacing_mm: float
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def points(self) -> torch.Tensor:
        """World coordinates of every voxel centre, shape ``(z, y, x, 3)`` (float32)."""
        axes = [torch.arange(n, dtype=torch.float32) * self.spacing_mm for n in self.shape]
        kk, jj, ii = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        index_mm = torch.stack([ii, jj, kk], dim=-1)
        return index_mm @ torch.as_tensor(self.direction, dtype=torch.float32).reshape(3, 3).T + torch.as_tensor(
            self.origin, dtype=torch.float32)

    def to_index(self, world: torch.Tensor) -> torch.Tensor:
        """Continuous voxel indices (x, y, z) of world points ``(..., 3)``."""
        d = torch.as_tensor(self.direction, dtype=world.dtype).reshape(3, 3)
        return (world - torch.as_tensor(self.origin, dtype=world.dtype)) @ d / self.spacing_mm

    def ras_affine(self) -> np.ndarray:
        """4 x 4 voxel-to-world matrix in nibabel's RAS convention (for arrays in x, y, z order)."""
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(self.direction).reshape(3, 3) * self.spacing_mm
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def voxel_ml(self) -> float:
        return self.spacing_mm ** 3 / 1000.0


@dataclass
class Template:
    """The template prepared for sampling at one output spacing.

    Attributes:
        maps: ``(4, z, y, x)`` float32 tensor: CSF, GM, WM probabilities and the ventricle region, smoothed for
            the output spacing (anti-aliasing), on :attr:`grid` (background is one minus the tissue).
        grid: the grid of :attr:`maps` (the template's, resampled to the working spacing).
        push: ``(3, z, y, x)`` float32 tensor, the world-space gradient (x, y, z; 1/mm) of the smoothed
            ventricle region, on :attr:`push_grid` (coarser: the field is smooth).
        push_grid: the grid of :attr:`push`.
        centre: world centre of the brain (x on the midline), mm.
        output: the output grid (the template brain plus :data:`FOV_MARGIN_MM`, at the output spacing).
        radius_mm: half the largest extent of the brain (normalises bias coordinates).
    """

    maps: torch.Tensor
    grid: Grid
    push: torch.Tensor
    push_grid: Grid
    centre: tuple[float, float, float]
    output: Grid
    radius_mm: float


def _grid_of(image: sitk.Image) -> Grid:
    return Grid(tuple(image.GetSize()), float(image.GetSpacing()[0]), tuple(image.GetOrigin()),
                tuple(image.GetDirection()))


def _axis_coordinates(grid: Grid) -> list[np.ndarray]:
    """World coordinate along each axis (x, y, z) of an axis-aligned grid's voxel indices."""
    direction = np.asarray(grid.direction).reshape(3, 3)
    if not np.allclose(np.abs(direction), np.eye(3)):
        raise ValueError(f"expected an axis-aligned template grid, got direction {grid.direction}")
    return [grid.origin[a] + direction[a, a] * grid.spacing_mm * np.arange(grid.shape[a]) for a in range(3)]


def _ventricle_region(csf: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """Largest connected component of ``csf > 0.5`` inside :data:`VENTRICLE_BOX_MM` (float32 0/1)."""
    import scipy.ndimage as ndi

    x, y, z = _axis_coordinates(_grid_of(reference))
    box = tuple(slice(int(np.flatnonzero((c >= lo) & (c <= hi)).min()), int(np.flatnonzero((c >= lo) & (c <= hi)).max()) + 1)
                for c, (lo, hi) in zip((z, y, x), VENTRICLE_BOX_MM[::-1]))
    components, count = ndi.label(csf[box] > 0.5)
    if count == 0:
        raise RuntimeError("no CSF component found in the ventricle box of the MNI152 template; the installed "
                           "nilearn template is not the expected one (pip install --upgrade nilearn)")
    sizes = ndi.sum_labels(np.ones_like(components), components, range(1, count + 1))
    region = np.zeros(csf.shape, np.float32)
    region[box] = components == 1 + int(np.argmax(sizes))
    return region


def _smoothed(array: np.ndarray, reference: sitk.Image, sigma_mm: float) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(reference)
    return sitk.SmoothingRecursiveGaussian(image, sigma_mm) if sigma_mm > 0 else image


@functools.lru_cache(maxsize=1)
def prepare_template(files: tuple[tuple[str, Path], ...], output_spacing_mm: float) -> Template:
    """Load the MNI152 maps and prepare them for sampling onto an ``output_spacing_mm`` grid (cached: the last
    result is kept for the next call with the same arguments).

    Each probability map is smoothed with a Gaussian of ``sigma = (output_spacing - 1) / 2`` mm (the
    anti-aliasing of :func:`~nnunet_ext.dataset_conversion.demo_sources.downsample`) and kept on a working
    grid of ``max(1, output_spacing / 2)`` mm cropped to the brain plus a margin.

    Args:
        files: ``tuple(mni_files().items())`` (:func:`~nnunet_ext.dataset_conversion.demo_sources.mni_files`).
        output_spacing_mm: spacing of the simulated images.
    """
    probabilities, t1 = mni_tissue_probabilities(dict(files))
    ventricles = _ventricle_region(probabilities[1], t1)
    brain = np.argwhere(probabilities[0] < 0.99)  # (z, y, x) indices of any tissue
    pad = int(math.ceil(FOV_MARGIN_MM / t1.GetSpacing()[0]))
    lo = np.maximum(brain.min(0) - pad, 0)
    hi = np.minimum(brain.max(0) + 1 + pad, probabilities.shape[1:])
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    cropped = t1[int(lo[2]):int(hi[2]), int(lo[1]):int(hi[1]), int(lo[0]):int(hi[0])]

    def grid_at(spacing: float) -> sitk.Image:
        size = [int(round(n * cropped.GetSpacing()[0] / spacing)) for n in cropped.GetSize()]
        image = sitk.Image(size, sitk.sitkFloat32)
        image.SetSpacing([spacing] * 3)
        image.SetDirection(cropped.GetDirection())
        image.SetOrigin(cropped.GetOrigin())
        return image

    def resampled(array: np.ndarray, sigma_mm: float, target: sitk.Image) -> np.ndarray:
        smoothed = _smoothed(array[crop], cropped, sigma_mm)
        return sitk.GetArrayFromImage(sitk.Resample(smoothed, target, sitk.Transform(), sitk.sitkLinear, 0.0))

    working, coarse = grid_at(max(1.0, output_spacing_mm / 2)), grid_at(max(2.0, output_spacing_mm / 2))
    sigma = (output_spacing_mm - 1.0) / 2
    maps = np.stack([resampled(a, sigma, working) for a in (*probabilities[1:], ventricles)])
    region = resampled(ventricles, VENTRICLE_SIGMA_MM, coarse)
    push_grid = _grid_of(coarse)
    gz, gy, gx = np.gradient(region, push_grid.spacing_mm)
    direction = np.asarray(push_grid.direction).reshape(3, 3)
    push = np.einsum("ij,jzyx->izyx", direction, np.stack([gx, gy, gz]))  # index gradient -> world gradient

    grid = _grid_of(working)
    brain_zyx = maps[:3].sum(0) > 0.5
    coords = _axis_coordinates(grid)
    counts = [brain_zyx.sum(axis=(0, 1)), brain_zyx.sum(axis=(0, 2)), brain_zyx.sum(axis=(1, 2))]  # along x, y, z
    extent_lo = np.array([c[n > 0].min() for c, n in zip(coords, counts)])
    extent_hi = np.array([c[n > 0].max() for c, n in zip(coords, counts)])
    centre = [0.0] + [float((c * n).sum() / n.sum()) for c, n in zip(coords[1:], counts[1:])]  # x: the midline
    size_out = [int(math.ceil((extent_hi[a] - extent_lo[a] + 2 * FOV_MARGIN_MM) / output_spacing_mm)) + 1
                for a in range(3)]
    origin = [extent_lo[a] - FOV_MARGIN_MM if direction[a, a] > 0 else extent_hi[a] + FOV_MARGIN_MM for a in range(3)]
    half_width = max(abs(extent_lo[0]), abs(extent_hi[0])) + FOV_MARGIN_MM  # x: symmetric about the midline
    size_out[0] = 2 * int(math.ceil(half_width / output_spacing_mm)) + 1
    origin[0] = -direction[0, 0] * output_spacing_mm * (size_out[0] - 1) / 2
    output = Grid(tuple(size_out), float(output_spacing_mm), tuple(float(v) for v in origin), grid.direction)
    return Template(torch.from_numpy(np.ascontiguousarray(maps)), grid, torch.from_numpy(push.astype(np.float32)),
                    push_grid, tuple(centre), output, float((extent_hi - extent_lo).max() / 2))


@dataclass(frozen=True)
class SubjectParameters:
    """The random parameters of one simulated subject (see the module docstring).

    Attributes:
        global_scale: isotropic scale factor ``g`` (subject size / template size).
        axis_scale: per-axis factors ``a_x, a_y, a_z`` on top of ``g``.
        rotation_deg: rotations about x, y, z.
        shear: shears (xy, xz, yz) of the affine.
        translation_mm: translation.
        lr_asymmetry: ``h``: relative enlargement of the left hemisphere (negative: the right one).
        ventricle_push_mm2: ``v``: strength of the ventricle expansion (negative: shrinking).
        elastic_controls_mm: ``(3, 5, 5, 5)`` velocity at the control points (x, y, z components; lattice in z,
            y, x order), mm.
    """

    global_scale: float
    axis_scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    shear: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    lr_asymmetry: float
    ventricle_push_mm2: float
    elastic_controls_mm: tuple[float, ...]

    def record(self) -> dict[str, Any]:
        """JSON-ready parameters, exactly as used (:meth:`from_record` rebuilds the same subject)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SubjectParameters:
        """The parameters of a :meth:`record` (e.g. read back from ``domains.json``)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def _draw(rng: np.random.Generator, name: str, size: int | None = None) -> np.ndarray:
    spec = VARIATION[name]
    if spec["distribution"] == "uniform":
        return rng.uniform(spec["low"], spec["high"], size)
    return np.clip(rng.normal(0.0, spec["sd"], size), -spec["limit"], spec["limit"])


def sample_subject(rng: np.random.Generator) -> SubjectParameters:
    """Draw one subject's parameters from :data:`VARIATION` (and the elastic controls) with ``rng``."""
    controls = rng.normal(0.0, ELASTIC_SD_MM, (3,) + (ELASTIC_CONTROL_POINTS,) * 3)
    mirrored = controls[:, :, :, ::-1] * np.array([-1.0, 1.0, 1.0])[:, None, None, None]  # x flipped and negated
    controls = (controls + mirrored) / 2 + ELASTIC_ANTISYMMETRY * (controls - mirrored) / 2
    return SubjectParameters(
        global_scale=float(np.exp(_draw(rng, "log_global_scale"))),
        axis_scale=tuple(float(v) for v in np.exp(_draw(rng, "log_axis_scale", 3))),
        rotation_deg=tuple(float(v) for v in _draw(rng, "rotation_deg", 3)),
        shear=tuple(float(v) for v in _draw(rng, "shear", 3)),
        translation_mm=tuple(float(v) for v in _draw(rng, "translation_mm", 3)),
        lr_asymmetry=float(_draw(rng, "lr_asymmetry")),
        ventricle_push_mm2=float(_draw(rng, "ventricle_push_mm2")),
        elastic_controls_mm=tuple(float(v) for v in controls.ravel()),
    )


def _rotation(degrees: tuple[float, float, float]) -> torch.Tensor:
    ax, ay, az = (math.radians(d) for d in degrees)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return (rz @ ry @ rx).double()



def _elastic(params: SubjectParameters, output: Grid) -> torch.Tensor:
    """World displacement ``(z, y, x, 3)`` of the elastic step on the output grid."""
    from cornucopia.utils.warps import exp_velocity

    controls = torch.tensor(params.elastic_controls_mm, dtype=torch.float32).reshape(
        (1, 3) + (ELASTIC_CONTROL_POINTS,) * 3)
    nx, ny, nz = output.shape
    coarse = (ELASTIC_INTEGRATION_POINTS,) * 3
    velocity = F.interpolate(controls, size=coarse, mode="trilinear", align_corners=True)[0]
    # exp_velocity works in voxels of the integration grid, component i along tensor axis i (z, y, x); the
    # controls are displacements along the voxel axes x, y, z in mm
    step_mm = [output.spacing_mm * (n - 1) / (c - 1) for n, c in zip((nz, ny, nx), coarse)]
    voxels = torch.stack([velocity[2] / step_mm[0], velocity[1] / step_mm[1], velocity[0] / step_mm[2]], dim=-1)
    ddf = exp_velocity(voxels[None], steps=ELASTIC_STEPS)[0].permute(3, 0, 1, 2)
    index_mm = torch.stack([ddf[2] * step_mm[2], ddf[1] * step_mm[1], ddf[0] * step_mm[0]])
    dense = F.interpolate(index_mm[None], size=(nz, ny, nx), mode="trilinear", align_corners=True)[0]
    direction = torch.as_tensor(output.direction, dtype=torch.float32).reshape(3, 3)
    return dense.permute(1, 2, 3, 0) @ direction.T


def _sample(volume: torch.Tensor, grid: Grid, world: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` ``(C, z, y, x)`` on ``grid`` at world points ``(z', y', x', 3)``; zero
    outside the grid."""
    index = grid.to_index(world)
    size = torch.as_tensor(grid.shape, dtype=index.dtype)
    normalised = 2 * index / (size - 1) - 1
    return F.grid_sample(volume[None], normalised[None], mode="bilinear", padding_mode="zeros",
                         align_corners=True)[0]


@dataclass
class Subject:
    """One subject on the output grid.

    Attributes:
        tissue: ``(4, z, y, x)`` float32 probabilities of background, CSF, GM and WM (summing to 1).
        ventricles: ``(z, y, x)`` the deformed lateral-ventricle region (0..1).
        left: ``(z, y, x)`` share of each voxel in the template's left hemisphere (world ``x > 0``), linear over
            one voxel across the midline.
    """

    tissue: torch.Tensor
    ventricles: torch.Tensor
    left: torch.Tensor

    def labels(self) -> np.ndarray:
        """Argmax over the tissue channels: 0 background, 1 CSF, 2 GM, 3 WM; uint8 ``(z, y, x)``."""
        return self.tissue.argmax(0).to(torch.uint8).numpy()

    def volumes(self, grid: Grid) -> dict[str, float]:
        """Volumes in ml from the probabilities: CSF, GM, WM, brain (GM + WM), lateral ventricles (CSF inside
        the deformed ventricle region), left and right hemisphere (GM + WM), and the asymmetry index
        ``2 (L - R) / (L + R)``."""
        v = grid.voxel_ml()
        csf, gm, wm = (self.tissue[i].double() for i in (1, 2, 3))
        brain = gm + wm
        out = {"csf_ml": float(csf.sum()) * v, "gm_ml": float(gm.sum()) * v, "wm_ml": float(wm.sum()) * v,
               "brain_ml": float(brain.sum()) * v, "ventricles_ml": float((csf * self.ventricles).sum()) * v,
               "left_ml": float((brain * self.left).sum()) * v, "right_ml": float((brain * (1 - self.left)).sum()) * v}
        out["asymmetry_index"] = 2 * (out["left_ml"] - out["right_ml"]) / (out["left_ml"] + out["right_ml"])
        return {k: round(val, 5 if k == "asymmetry_index" else 3) for k, val in out.items()}


def make_subject(template: Template, params: SubjectParameters) -> Subject:
    """Deform the template's maps with ``params`` onto ``template.output`` (see the module docstring)."""
    y = template.output.points() + _elastic(params, template.output)
    centre = torch.as_tensor(template.centre, dtype=torch.float32)
    gx, gy, gz = (params.global_scale * a for a in params.axis_scale)
    sxy, sxz, syz = params.shear
    forward = _rotation(params.rotation_deg) @ torch.tensor(
        [[1.0, sxy, sxz], [0.0, 1.0, syz], [0.0, 0.0, 1.0]], dtype=torch.float64) @ torch.diag(
        torch.tensor([gx, gy, gz], dtype=torch.float64))
    shift = centre + torch.as_tensor(params.translation_mm, dtype=torch.float32)
    x = (y - shift) @ torch.linalg.inv(forward).T.float() + centre
    lr = x[..., 0]
    x = torch.stack([lr * (1 - params.lr_asymmetry * torch.tanh(lr / ASYMMETRY_WIDTH_MM)), x[..., 1], x[..., 2]], -1)
    x = x + params.ventricle_push_mm2 * _sample(template.push, template.push_grid, x).permute(1, 2, 3, 0)
    maps = _sample(template.maps, template.grid, x)
    tissue = maps[:3].clamp(0, 1)
    total = tissue.sum(0, keepdim=True)
    tissue = tissue / total.clamp(min=1)  # the template's CSF + GM + WM never exceeds 1; interpolation may
    left = (x[..., 0] / template.output.spacing_mm + 0.5).clamp(0, 1)  # a voxel across the midline is split
    return Subject(torch.cat([1 - tissue.sum(0, keepdim=True), tissue]), maps[3].clamp(0, 1), left)
