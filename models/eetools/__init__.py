"""The quantize-and-verify stage of the electra-edge export toolchain, one concern per module.

Only the standard library, numpy, onnx and onnxruntime are imported, so it runs where torch and
transformers are not installed (CI).

- ``common``: the folder format's constants (tasks, inputs, file names, sentences, bound),
  ``ExportError``, sha256 / JSON / tool-version helpers;
- ``wordpiece``: the reference WordPiece tokenizer reading tokenizer.json;
- ``graph``: fp32 graph interface checks, op census, int8 graph checks, task inference;
- ``quant``: onnxruntime ``quantize_dynamic``;
- ``sessions``: onnxruntime sessions, the exact-integer evaluator, output shaping;
- ``verify``: int8-vs-fp32 verification and golden rows;
- ``folder``: writing a model folder with its manifest, and checking one.

``models/quantize.py`` is the command line over these, and re-exports their names.
"""
