"""Per-domain and continual-learning evaluation: metrics, reports, plots."""
