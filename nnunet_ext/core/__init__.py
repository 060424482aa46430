"""Pure torch / numpy algorithms. No nnunetv2 import, no file I/O, no environment variables."""
