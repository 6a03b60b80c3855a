"""Exporting a trained classifier (``formats``: ONNX, TorchScript, safetensors) and predicting with an ONNX export
without a checkpoint (``onnx_predict``): ``python -m convnext_pl.export ...``."""
