"""Public raw layouts and embedded demo data -> nnU-Net raw datasets with domain metadata."""
