import json
import os

import pytest

from nnunet_ext.domains import DomainMetadata, load_domains, save_domains
from nnunet_ext.utils.atomic import atomic_directory, write_json_atomic


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_directory_rolls_back_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_then_replaces(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_domain_metadata_round_trip_and_errors(tmp_path):
    meta = DomainMetadata()
    meta.add_domain("siteA", "real site A", simulated=False)
    meta.add_domain("siteA_sim", "simulated", simulated=True, derived_from="siteA")
    meta.add_case("c1", "siteA", "train", subject="p1")
    meta.add_case("c2", "siteA_sim", "test", subject="p1", severity="mild")
    with pytest.raises(ValueError, match="unknown domain"):
        meta.add_case("c3", "nope", "train", subject="p2")
    with pytest.raises(ValueError, match="duplicate"):
        meta.add_case("c1", "siteA", "train", subject="p1")
    with pytest.raises(ValueError, match="split"):
        meta.add_case("c4", "siteA", "val", subject="p1")
    save_domains(meta, tmp_path)
    back = load_domains(tmp_path)
    assert back.cases == meta.cases and back.domains == meta.domains
    assert back.cases_of("siteA_sim") == ["c2"]
    with pytest.raises(KeyError, match="c9"):
        back.domain_of("c9")


def test_load_domains_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="domains.json"):
        load_domains(tmp_path)
    (tmp_path / "domains.json").write_text('{"domains": {}, "cases": {"c1": {"domain": "x"}}}')
    with pytest.raises(ValueError, match="c1"):
        load_domains(tmp_path)


def test_subsets_and_subjects_round_trip_and_old_files_are_unchanged(tmp_path):
    meta = DomainMetadata()
    meta.add_domain("siemens_3", "simulated", simulated=True)
    meta.add_case("siemens_3_s00", "siemens_3", "train", subject="s00")
    save_domains(meta, tmp_path)
    assert "subjects" not in json.loads((tmp_path / "domains.json").read_text())
    meta.add_case("siemens_3_s01", "siemens_3", "train", subject="s01", subset="val")
    meta.add_case("siemens_3_s02", "siemens_3", "test", subject="s02", subset="test")
    meta.subjects["s01"] = {"brain_ml": 1500.0}
    save_domains(meta, tmp_path)
    back = load_domains(tmp_path)
    assert back.subjects == {"s01": {"brain_ml": 1500.0}}
    assert back.cases_in_subset("val") == ["siemens_3_s01"] and back.cases_in_subset("test", "siemens_3") == [
        "siemens_3_s02"]
    with pytest.raises(ValueError, match=r"subset must be one of .* got subset 'test' with split 'train'"):
        meta.add_case("siemens_3_s03", "siemens_3", "train", subject="s03", subset="test")
    with pytest.raises(ValueError, match=r"'subjects' must be an object"):
        DomainMetadata.from_dict({"domains": {}, "cases": {}, "subjects": []})
