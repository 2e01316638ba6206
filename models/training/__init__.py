"""Training (PyTorch): towers, the trainer, evaluation and ONNX export. Never imported by the service."""
