"""Triton kernels of fused_lr, installed as ``fused_lr.kernels``."""
