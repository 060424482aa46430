"""nn.Modules that carry a method's test-time behaviour, so stock nnUNetv2_predict reproduces it."""
