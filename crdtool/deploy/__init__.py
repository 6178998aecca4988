"""Deployment: ONNX export + parity, INT8 QDQ / FP16 graphs, TensorRT engines, the export manifest.

``export_artifacts`` (crdtool.deploy.export) is the one-call entry point; the pieces are importable for
the benchmark helper: ``export_onnx``/``verify_onnx`` (onnx), ``quantize_int8_qdq``/``convert_fp16`` (quantize).
"""

from crdtool.deploy.onnx import Parity, export_onnx, verify_onnx

__all__ = ["Parity", "export_onnx", "verify_onnx"]
