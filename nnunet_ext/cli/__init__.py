"""The ``nnext`` command."""
