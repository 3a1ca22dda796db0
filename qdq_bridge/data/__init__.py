"""Data side: what parity runs on. `arrays` (Dataset, random subsets), `preprocessing` (how images become
tensors), `images` (image folders and lists, decoded in worker processes), `sources` (opening a dataset spec: an
.npz, an image source, the bundled digits; random inputs).

Imports numpy, Pillow-free stdlib and qdq_bridge.errors/choices only: no torch, no ONNX.
"""
