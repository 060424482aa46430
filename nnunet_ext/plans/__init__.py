"""Plans variants written by the nnext CLI (nnU-Net cannot discover external planners)."""
