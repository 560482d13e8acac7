"""The model runtime: load an ONNX GLM export and generate text from it with onnxruntime."""
