"""Make nnU-Net's stock commands find our trainers without the user exporting anything.

nnU-Net (>= 2.8.0) looks trainers up by name in nnunetv2 first and then in every folder listed in the
environment variable ``nnUNet_extTrainer`` (``os.pathsep``-separated), importing each module of those
folders as a *top-level* module. Our folder (:data:`TRAINER_FOLDER`) holds exactly one such module,
``nnunet_ext_trainers``, which only re-exports the classes of :mod:`nnunet_ext.trainers`.

The wheel installs ``nnunet_ext-autodiscover.pth`` into site-packages; Python runs its single line at
interpreter start-up, which calls :func:`register`. :func:`register` appends our folder to the variable
and keeps whatever the user set before it. Set ``NNUNET_EXT_NO_AUTODISCOVERY=1`` to opt out.

This module runs in every Python process of the environment: it imports nothing beyond ``os``.
"""

from __future__ import annotations

import os

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNET_EXT_NO_AUTODISCOVERY"
TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_discovery")


def opted_out(environ: os._Environ | dict | None = None) -> bool:
    """True when the user disabled automatic registration with ``NNUNET_EXT_NO_AUTODISCOVERY``."""
    environ = os.environ if environ is None else environ
    return environ.get(OPT_OUT_VAR, "").strip().lower() not in ("", "0", "false", "no")


def extended_value(current: str | None, folder: str = TRAINER_FOLDER) -> str:
    """The value of ``nnUNet_extTrainer`` with ``folder`` appended, the user's entries first and kept.

    >>> extended_value(None, "/x")
    '/x'
    >>> extended_value("/mine", "/x") == "/mine" + os.pathsep + "/x"
    True
    """
    entries = [p for p in (current or "").split(os.pathsep) if p]
    if any(os.path.abspath(p) == os.path.abspath(folder) for p in entries):
        return os.pathsep.join(entries)
    return os.pathsep.join([*entries, folder])


def register() -> None:
    """Append :data:`TRAINER_FOLDER` to ``nnUNet_extTrainer`` unless the user opted out.

    Idempotent: a child process that inherits the variable does not add the folder twice.
    """
    if not opted_out():
        os.environ[ENV_VAR] = extended_value(os.environ.get(ENV_VAR))
