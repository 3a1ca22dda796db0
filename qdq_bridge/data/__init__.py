"""Data side: what parity runs on. `arrays` (Dataset, random subsets), `preprocessing` (how images become
tensors), `images` (image folders and lists, decoded in torch DataLoader worker processes), `sources` (opening a
dataset spec: an .npz, an image source, the bundled digits; random inputs).

Imports the base modules (errors, choices) only; no ONNX, no TensorRT.
"""
