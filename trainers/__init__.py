"""Trainers for the distillation and fusion models of LRFR, BTNet, CATFace and LGAF."""
