"""``python -m nnunet_ext`` is the ``nnext`` command."""

from nnunet_ext.cli.main import main_exit

main_exit()
