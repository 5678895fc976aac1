#!/usr/bin/env python3
"""Runs the PyPI `onnx` package's checker with full_check=True (type and shape inference)
on a .onnx file and prints its opset, IR version and metadata keys.

    python check_onnx.py MODEL.onnx
"""
import sys

import onnx

model = onnx.load(sys.argv[1])
onnx.checker.check_model(model, full_check=True)
print(f"ok: IR {model.ir_version}, opset {model.opset_import[0].version}, "
      f"metadata {sorted(p.key for p in model.metadata_props)}")
