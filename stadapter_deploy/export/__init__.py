"""Build time: turn a trained model into a bundle (ONNX, TensorRT, parity gates) and benchmark it.

This package may import `runtime` (to load and check what it built); `runtime` never imports it.
"""
