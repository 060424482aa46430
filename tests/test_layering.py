"""Imports point downwards only: core never imports nnunetv2 (nor file-writing layers)."""

import pkgutil
import subprocess
import sys

import nnunet_ext.core


def test_core_modules_import_without_nnunetv2():
    modules = [f"nnunet_ext.core.{m.name}" for m in pkgutil.iter_modules(nnunet_ext.core.__path__)]
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'nnunetv2' or name.startswith('nnunetv2.'):\n"
        "            raise ImportError('nnunetv2 is blocked in core')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import nnunet_ext.core\n"
        + "".join(f"import {m}\n" for m in modules)
        + "assert not any(k.startswith('nnunetv2') for k in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_trainers_import_nnunetv2_training():
    import pathlib

    root = pathlib.Path(nnunet_ext.core.__file__).parents[1]
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if "nnunetv2.training" in p.read_text(encoding="utf-8")
        and p.relative_to(root).parts[0] != "trainers"
    ]
    assert offenders == []
