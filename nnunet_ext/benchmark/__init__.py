"""``nnext benchmark``: stock nnU-Net commands for every row of a trainer list, one trainer x domain matrix.

:mod:`~nnunet_ext.benchmark.rows` says what is run (rows, runs, shards), :mod:`~nnunet_ext.benchmark.runner`
runs it with the stock ``nnUNetv2_*`` commands and caches every finished step, :mod:`~nnunet_ext.benchmark.matrix`
aggregates the per-domain evaluations and costs, :mod:`~nnunet_ext.benchmark.report` writes JSON, Markdown and
a figure.
"""
