"""Exporters: ONNX (FP32, QDQ INT8) and TFLite."""
