"""INT8 quantization: ONNX Runtime static PTQ (QDQ, U8 activations, S8 per-channel weights),
sensitivity-driven mixed precision, and quantization-aware training in PyTorch."""
