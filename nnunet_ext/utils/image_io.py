"""Reading images so that a truncated or corrupt file is an error naming the file and the fix.

Every reader of user-supplied images (dataset conversion, and evaluation as it moves over) goes through
this module instead of calling ``SimpleITK.ReadImage`` or ``nibabel.load`` directly:

* :func:`read_image` / :func:`read_array`: SimpleITK (NIfTI, MHA, NRRD, MINC, ...), the reader nnU-Net uses;
* :func:`load_nifti` / :func:`nifti_array`: nibabel, for NIfTI files SimpleITK refuses (M&Ms and HarP files
  with direction cosines that are not orthonormal) and for reading one frame of a 4D file.

Both raise :class:`ImageReadError` (a ``ValueError``) naming the file, what went wrong and the fix.

Two failure modes the libraries do not report by themselves are checked here:

* SimpleITK reads a NIfTI file whose voxel data is cut off (an interrupted download or copy) *without any
  error* and fills the missing voxels with zeros;
* nibabel reads a truncated ``.nii.gz`` lazily and only fails with a bare ``EOFError`` when the voxels are
  touched, far from the code that knows the file name.

A NIfTI file is therefore checked for completeness when it is opened: an uncompressed ``.nii`` must be at
least ``vox_offset + voxels x bytes per voxel`` long; for a ``.nii.gz`` the uncompressed size stored in
the gzip trailer must match, and if it does not (multi-member gzip streams, padded files), the stream is
decompressed once to count its bytes.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

#: what to do about a file that cannot be read
READ_FIX = ("re-download or re-copy this file (compare its size or checksum with the source); "
            "if it was written by a program that was interrupted, write it again")
_CHUNK = 1 << 20
_ITK_PREFIX = re.compile(r"^(ITK ERROR: \w+\(0x[0-9a-f]+\): |sitk::ERROR: )")


class ImageReadError(ValueError):
    """An image file is missing, truncated, corrupt or in a format the reader does not know.

    Attributes:
        path: the file.
        reason: what went wrong, in a few words.
        fix: what the user should do.
    """

    def __init__(self, path: str | os.PathLike, reason: str, fix: str = READ_FIX) -> None:
        self.path = Path(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"cannot read image {self.path}: {reason}. Fix: {fix}")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a file",
                             "check the path (and that the download was unpacked completely)")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "an empty file (0 bytes)")


def _sitk_reason(error: RuntimeError) -> str:
    """The informative line of a SimpleITK/ITK exception (its first line is a source location)."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    # ITK appends the C errno, which is "No such file or directory" even when the file exists
    lines = [_ITK_PREFIX.sub("", line) for line in lines if not line.startswith("Reason: ")]
    reason = (lines[-1] if lines else str(error).strip()).rstrip(".")
    if "Unable to determine ImageIO reader" in reason:
        reason = "not an image format SimpleITK can read, or its header is cut off"
    return reason[:300]


def _nifti_expected_bytes(image: Any) -> int:
    """Bytes a complete file of this nibabel image holds: the voxel offset and the voxels its header promises."""
    header = image.header
    voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    return int(image.dataobj.offset) + voxels * header.get_data_dtype().itemsize


def _gzip_uncompressed_size(path: Path) -> int | None:
    """Uncompressed size of all gzip members of ``path``, or None if the stream is cut off or corrupt."""
    total = 0
    decompressor = zlib.decompressobj(wbits=31)
    inside_member = False
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            while chunk:
                try:
                    total += len(decompressor.decompress(chunk))
                except zlib.error:
                    return None
                inside_member = True
                if decompressor.eof:  # one member ended; another may follow in the rest of the chunk
                    chunk = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=31)
                    inside_member = False
                else:
                    chunk = b""
    return None if inside_member else total


def _check_nifti_complete(path: Path, image: Any) -> None:
    """Raise if ``path`` holds fewer bytes than the header of its nibabel ``image`` promises (module docstring)."""
    expected = _nifti_expected_bytes(image)
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:  # gzip's ISIZE field
                return
        actual = _gzip_uncompressed_size(path)
        if actual is None:
            raise ImageReadError(path, "the gzip stream is cut off or corrupt (an interrupted download or copy?)")
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise ImageReadError(path, f"truncated: its header promises {expected} bytes (header and voxels), "
                                      f"the file holds {actual}")


def _nibabel_reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "the gzip stream ends early (truncated)"
    text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    if "Cannot work out file type" in text:
        return "not a NIfTI file, or its header is cut off"
    return f"{type(error).__name__}: {text}"[:300]


def _nibabel_errors() -> tuple[type[BaseException], ...]:
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    return (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)


def load_nifti(path: str | os.PathLike) -> Any:
    """Open a NIfTI file with nibabel (header read, voxels loaded lazily) after checking it is complete.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        The ``nibabel`` image; read its voxels with :func:`nifti_array`.

    Raises:
        ImageReadError: the file is missing, not NIfTI, or truncated.
    """
    import nibabel as nib

    path = Path(path)
    _check_exists(path)
    try:
        image = nib.load(str(path))
    except _nibabel_errors() as e:
        raise ImageReadError(path, _nibabel_reason(e)) from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageReadError(path, f"a {type(image).__name__}, not a single-file NIfTI image",
                             "convert it to .nii.gz")
    _check_nifti_complete(path, image)
    return image


def nifti_array(image: Any, frame: int | None = None) -> np.ndarray:
    """The voxels of a :func:`load_nifti` image (nibabel axis order x, y, z[, t]).

    Args:
        image: from :func:`load_nifti`.
        frame: index on the last axis of a 4D image (e.g. one cine frame); None reads everything.

    Returns:
        The voxel array in the file's data type.

    Raises:
        ImageReadError: the voxel data cannot be decoded.
    """
    try:
        data = image.dataobj if frame is None else image.dataobj[..., frame]
        return np.asanyarray(data)
    except _nibabel_errors() as e:
        raise ImageReadError(image.get_filename(), _nibabel_reason(e)) from None


def read_image(path: str | os.PathLike, pixel_type: int | None = None) -> sitk.Image:
    """Read an image with SimpleITK (as nnU-Net does); a NIfTI file is checked for completeness first.

    Args:
        path: any file SimpleITK reads (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``, ``.mnc``, ...).
        pixel_type: SimpleITK pixel type to cast to (e.g. ``SimpleITK.sitkFloat32``); None keeps the file's.

    Returns:
        The image.

    Raises:
        ImageReadError: the file is missing, truncated, corrupt or not an image SimpleITK reads.

    >>> try:
    ...     read_image("missing.nii.gz")
    ... except ImageReadError as e:
    ...     print(e.reason)
    no such file
    """
    path = Path(path)
    _check_exists(path)
    if _is_nifti(path):
        load_nifti(path)
    try:
        return sitk.ReadImage(str(path)) if pixel_type is None else sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as e:
        reason = _sitk_reason(e)
        if "orthonormal" in reason:
            raise ImageReadError(path, reason, "its direction cosines are not orthonormal, which SimpleITK and "
                                 "nnU-Net refuse: write it again with an orthonormal direction (nnext convert "
                                 "repairs this for the datasets it knows)") from None
        raise ImageReadError(path, reason) from None


def read_array(path: str | os.PathLike, pixel_type: int | None = None) -> np.ndarray:
    """:func:`read_image` as a numpy array.

    Shape:
        ``(z, y, x)`` for a 3D image (SimpleITK's array order), with a trailing component axis for vector
        pixels.

    Raises:
        ImageReadError: as :func:`read_image`.
    """
    return sitk.GetArrayFromImage(read_image(path, pixel_type))
