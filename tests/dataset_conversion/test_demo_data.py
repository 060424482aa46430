"""Demo datasets from embedded real MRI: layout, domain metadata, determinism, severity, errors, atomicity.

Everything is built with profile "tiny". The Colin27 tests need Debian's mricron-data and are skipped
without it; the MNI tests (nilearn is a dependency) always run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli.main import main
from nnunet_ext.dataset_conversion import demo_data, demo_slabs, demo_sources
from nnunet_ext.dataset_conversion.demo_data import (
    PROFILES,
    SEVERITIES,
    available_demo_datasets,
    build_demo_dataset,
)
from nnunet_ext.domains import load_domains

COLIN_HEAD = Path("/usr/share/mricron/templates/ch2.nii.gz")
requires_colin = pytest.mark.skipif(
    not COLIN_HEAD.is_file(), reason=f"{COLIN_HEAD} missing: apt-get install mricron-data"
)
DATASETS = {
    "mni_tissue": (990, "Dataset990_DemoMNITissue", "mni152", {0, 1, 2}),
    "colin_skullstrip": (991, "Dataset991_DemoColinSkullStrip", "colin27", {0, 1}),
}
TINY = PROFILES["tiny"]


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _cases(folder: Path, split: str) -> list[str]:
    suffix = "Tr" if split == "train" else "Ts"
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / f"images{suffix}").glob("*_0000.nii.gz"))


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nnUNet_raw")


@pytest.fixture(scope="module")
def built(raw_root: Path) -> dict[str, Path]:
    """Datasets built with seed 0 and every severity, once per module (filled lazily)."""
    return {}


def _get(built: dict[str, Path], raw_root: Path, name: str) -> Path:
    if name not in built:
        built[name] = build_demo_dataset(name, DATASETS[name][0], raw_root, seed=0, profile="tiny")
    return built[name]


@pytest.fixture(params=["mni_tissue", pytest.param("colin_skullstrip", marks=requires_colin)])
def dataset(request: pytest.FixtureRequest, built: dict[str, Path], raw_root: Path) -> tuple[str, Path]:
    return request.param, _get(built, raw_root, request.param)


@pytest.fixture
def mni(built: dict[str, Path], raw_root: Path) -> Path:
    return _get(built, raw_root, "mni_tissue")


def test_folder_name_and_layout(dataset: tuple[str, Path]) -> None:
    name, folder = dataset
    _, folder_name, _, _ = DATASETS[name]
    assert folder.name == folder_name
    assert sorted(p.name for p in folder.iterdir()) == [
        "dataset.json", "domains.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"
    ]
    for split, suffix in (("train", "Tr"), ("test", "Ts")):
        cases = _cases(folder, split)
        assert cases
        assert sorted(p.name for p in (folder / f"images{suffix}").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
        assert sorted(p.name for p in (folder / f"labels{suffix}").iterdir()) == [f"{c}.nii.gz" for c in cases]


def test_dataset_json(dataset: tuple[str, Path]) -> None:
    name, folder = dataset
    dj = json.loads((folder / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending", "description", "reference"} <= set(dj)
    assert dj["channel_names"] == {"0": "T1"}
    assert set(dj["labels"].values()) == DATASETS[name][3]
    assert dj["file_ending"] == ".nii.gz"
    assert dj["numTraining"] == len(_cases(folder, "train")) >= 5
    assert "licence" in dj and ("McConnell" in dj["licence"])


def test_every_case_has_foreground_valid_labels_and_profile_grid(dataset: tuple[str, Path]) -> None:
    name, folder = dataset
    valid = DATASETS[name][3]
    for suffix in ("Tr", "Ts"):
        for image_path in sorted((folder / f"images{suffix}").glob("*_0000.nii.gz")):
            label_path = folder / f"labels{suffix}" / image_path.name.replace("_0000.nii.gz", ".nii.gz")
            image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
            assert image.GetPixelID() == sitk.sitkFloat32 and label.GetPixelID() == sitk.sitkUInt8
            for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
                np.testing.assert_allclose(getattr(image, get)(), getattr(label, get)(), atol=1e-6)
            np.testing.assert_allclose(image.GetSpacing(), [TINY.spacing_mm] * 3)
            size = image.GetSize()
            assert size[2] == TINY.slab_slices and max(size[:2]) <= 64, size
            values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
            assert values <= valid and values - {0}, (label_path.name, values)


def test_domains_json_covers_every_case_with_split_and_simulated_flags(dataset: tuple[str, Path]) -> None:
    name, folder = dataset
    source = DATASETS[name][2]
    meta = load_domains(folder)
    on_disk = {c: "train" for c in _cases(folder, "train")} | {c: "test" for c in _cases(folder, "test")}
    assert {c: m["split"] for c, m in meta.cases.items()} == on_disk
    assert {m["subject"] for m in meta.cases.values()} == {source}
    assert meta.domains[source]["simulated"] is False
    shifted = [f"{source}_sim_{s}" for s in SEVERITIES]
    assert list(meta.domains) == [source, *shifted]
    real_test = meta.cases_of(source, "test")
    assert len(real_test) == TINY.num_test_slabs
    assert len(meta.cases_of(source, "train")) == len(on_disk) - (1 + len(SEVERITIES)) * TINY.num_test_slabs
    for domain, severity in zip(shifted, SEVERITIES):
        info = meta.domains[domain]
        assert info["simulated"] is True and info["derived_from"] == source
        assert info["transform"]["severity"] == severity
        assert [t["name"] for t in info["transform"]["transforms"]] == [t["name"] for t in SEVERITIES[severity]]
        assert meta.cases_of(domain, "train") == []
        # the same held-out slabs, with unchanged labels
        assert [c.replace(domain, source) for c in meta.cases_of(domain, "test")] == real_test
        for case in meta.cases_of(domain):
            clean = case.replace(domain, source)
            np.testing.assert_array_equal(
                _array(folder / "labelsTs" / f"{case}.nii.gz"), _array(folder / "labelsTs" / f"{clean}.nii.gz")
            )


def test_written_cases_keep_the_source_world_coordinates(dataset: tuple[str, Path]) -> None:
    """The foreground centroid in mm, over all real slabs, matches the one computed at the source's 1 mm."""
    name, folder = dataset
    files = demo_data.DEMO_DATASETS[name].sources()
    if name == "mni_tissue":
        gm, wm = (sitk.ReadImage(str(files[k])) for k in ("gm", "wm"))
        source_mask = sitk.Maximum(gm, wm) > 127
    else:
        source_mask = sitk.ReadImage(str(files["bet"])) > 0

    def centroid(mask: sitk.Image) -> tuple[np.ndarray, int]:
        idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)
        spacing, origin = np.asarray(mask.GetSpacing()), np.asarray(mask.GetOrigin())
        direction = np.asarray(mask.GetDirection()).reshape(3, 3)
        return origin + (direction @ (idx * spacing).T).T.sum(axis=0) / len(idx), len(idx)

    total, weight = np.zeros(3), 0
    meta = load_domains(folder)
    source = DATASETS[name][2]
    for case in meta.cases_of(source):
        suffix = "Tr" if meta.cases[case]["split"] == "train" else "Ts"
        c, n = centroid(sitk.ReadImage(str(folder / f"labels{suffix}" / f"{case}.nii.gz")))
        total, weight = total + c * n, weight + n
    expected, _ = centroid(source_mask)
    np.testing.assert_allclose(total / weight, expected, atol=TINY.spacing_mm / 2)


def test_tissue_labels_agree_with_t1_contrast(mni: Path) -> None:
    """In a T1 image white matter is brighter than grey matter, and grey matter brighter than CSF/background."""
    folder = mni
    image = np.concatenate([_array(p) for p in sorted((folder / "imagesTr").glob("*_0000.nii.gz"))])
    label = np.concatenate([_array(p) for p in sorted((folder / "labelsTr").glob("*.nii.gz"))])
    brain = image > 0
    means = [image[(label == k) & brain].mean() for k in (0, 1, 2)]
    assert means[0] < means[1] < means[2], means


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def test_severity_grows_after_nnunet_normalisation(dataset: tuple[str, Path]) -> None:
    """Mean |z(shifted) - z(clean)| over the test slabs (nnU-Net z-scores MRI per case) grows with severity."""
    name, folder = dataset
    source = DATASETS[name][2]
    test_cases = load_domains(folder).cases_of(source, "test")
    clean = {c: _zscore(_array(folder / "imagesTs" / f"{c}_0000.nii.gz")) for c in test_cases}
    distances = []
    for severity in SEVERITIES:
        domain = f"{source}_sim_{severity}"
        shifted = {c: _zscore(_array(folder / "imagesTs" / f"{c.replace(source, domain)}_0000.nii.gz")) for c in clean}
        distances.append(np.mean([np.abs(shifted[c] - clean[c]).mean() for c in clean]))
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_same_seed_is_byte_identical_and_other_seed_changes_only_shifted_images(tmp_path: Path) -> None:
    first = build_demo_dataset("mni_tissue", 990, tmp_path / "a", seed=0, profile="tiny", severities=("mild",))
    again = build_demo_dataset("mni_tissue", 990, tmp_path / "b", seed=0, profile="tiny", severities=("mild",))
    other = build_demo_dataset("mni_tissue", 990, tmp_path / "c", seed=1, profile="tiny", severities=("mild",))
    for suffix in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for path in sorted((first / suffix).iterdir()):
            assert path.read_bytes() == (again / suffix / path.name).read_bytes(), path.name
            same = np.array_equal(_array(path), _array(other / suffix / path.name))
            shifted_image = suffix == "imagesTs" and "_sim_" in path.name
            assert same != shifted_image, path.name
    assert (first / "domains.json").read_bytes() == (again / "domains.json").read_bytes()


def test_severity_artefact_does_not_depend_on_other_requested_severities(mni: Path, tmp_path: Path) -> None:
    folder = mni
    alone = build_demo_dataset("mni_tissue", 990, tmp_path, seed=0, profile="tiny", severities=("severe",))
    for path in sorted(alone.glob("imagesTs/mni152_sim_severe_*")):
        assert path.read_bytes() == (folder / "imagesTs" / path.name).read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dataset_id": 0}, ValueError, r"dataset_id must be an integer in 1\.\.999.*--id"),
        ({"dataset_id": 1000}, ValueError, r"1\.\.999"),
        ({"dataset_id": "990"}, ValueError, r"dataset_id"),
        ({"name": "mni"}, ValueError, r"name must be one of \['colin_skullstrip', 'mni_tissue'\]"),
        ({"profile": "huge"}, ValueError, r"profile must be one of \['demo', 'tiny'\]"),
        ({"severities": ("mild", "extreme")}, ValueError, r"\['extreme'\].*\['mild', 'moderate', 'severe'\]"),
        ({"severities": "mild"}, ValueError, r"sequence of names.*\('mild',\)"),
        ({"severities": ("mild", "mild")}, ValueError, r"duplicates"),
        ({"seed": -1}, ValueError, r"seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_with_the_fix(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    args = {"name": "mni_tissue", "dataset_id": 990, "raw_root": tmp_path, "profile": "tiny"} | kwargs
    with pytest.raises(error, match=match):
        build_demo_dataset(**args)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_raises_file_exists_naming_overwrite(raw_root: Path, dataset: tuple[str, Path]) -> None:
    name, folder = dataset
    with pytest.raises(FileExistsError, match=rf"{folder.name}.*--overwrite"):
        build_demo_dataset(name, DATASETS[name][0], raw_root, profile="tiny")


def test_id_used_by_another_dataset_raises_file_exists(tmp_path: Path) -> None:
    (tmp_path / "Dataset990_Other").mkdir()
    with pytest.raises(FileExistsError, match=r"dataset id 990 is already used by .*Dataset990_Other.*--id"):
        build_demo_dataset("mni_tissue", 990, tmp_path, profile="tiny", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset990_Other"]


def _failing_writer(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    real = demo_slabs.write_nifti
    calls = []

    def write(image: sitk.Image, path: Path) -> None:
        calls.append(path)
        if len(calls) > after:
            raise OSError("disk full (simulated)")
        real(image, path)

    monkeypatch.setattr(demo_slabs, "write_nifti", write)


def test_failure_mid_build_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_writer(monkeypatch, after=3)
    with pytest.raises(OSError, match="disk full"):
        build_demo_dataset("mni_tissue", 990, tmp_path, profile="tiny", severities=())
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_demo_dataset("mni_tissue", 990, tmp_path, profile="tiny", severities=())
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    _failing_writer(monkeypatch, after=3)
    with pytest.raises(OSError, match="disk full"):
        build_demo_dataset("mni_tissue", 990, tmp_path, profile="tiny", severities=(), overwrite=True)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_availability_reports_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert available_demo_datasets()["mni_tissue"] is None
    monkeypatch.setattr(demo_sources, "MRICRON_TEMPLATES", tmp_path / "nowhere")
    assert "apt-get install mricron-data" in available_demo_datasets()["colin_skullstrip"]
    with pytest.raises(RuntimeError, match="apt-get install mricron-data"):
        build_demo_dataset("colin_skullstrip", 991, tmp_path, profile="tiny")
    real_find_spec = demo_sources.importlib.util.find_spec
    monkeypatch.setattr(
        demo_sources.importlib.util, "find_spec", lambda n, *a: None if n == "nilearn" else real_find_spec(n, *a)
    )
    assert "pip install nilearn" in available_demo_datasets()["mni_tissue"]
    assert [p.name for p in tmp_path.iterdir()] == []


def test_cli_writes_and_reports_cases_per_domain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(["demo-data", "mni-tissue", "--profile", "tiny", "--severities", "mild"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'Dataset990_DemoMNITissue'}" in out
    assert "6 train, 2 test" in out and "mni152_sim_mild" in out and "mni152_sim_severe" not in out
    assert main(["demo-data", "mni-tissue", "--profile", "tiny"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["demo-data", "mni-tissue"]) == 2
    assert "export nnUNet_raw=DIR" in capsys.readouterr().err
    assert main(["demo-data", "all", "--id", "5", "--raw-root", "x"]) == 2
    assert "--id names one dataset" in capsys.readouterr().err
    monkeypatch.setattr(demo_sources, "MRICRON_TEMPLATES", Path("/nowhere"))
    assert main(["demo-data", "colin-skullstrip", "--raw-root", "x"]) == 2
    assert "apt-get install mricron-data" in capsys.readouterr().err
