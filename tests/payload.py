"""A checkpoint entry that runs code when unpickled: it creates a marker file (tests of safe loading)."""

from __future__ import annotations

from pathlib import Path


def plant(marker: str) -> str:
    """What a malicious checkpoint runs when unpickled: here, it only creates a file."""
    Path(marker).write_text("the checkpoint ran code")
    return marker


class Payload:
    """Unpickles as ``plant(marker)``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return plant, (self.marker,)
