"""Small helpers shared by the file-writing layers (dataset conversion, evaluation, CLI)."""
