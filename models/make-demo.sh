#!/usr/bin/env bash
# Regenerate the committed random-weight demo models in models/demo/ (classifier, tagger, encoder:
# RANDOM weights, tiny shape, seed 0, the project's generated vocabulary).  Needs
# models/requirements.txt (torch etc.), no network.  The demo discriminator is trained instead:
# see models/demo/README.md (models/train_demo.py).
# uint8 weights (per-tensor): onnxruntime computes u8 x u8 exactly on every CPU, so the golden
# ort_int8 values are what exact integer arithmetic (tract) gives; with int8 weights onnxruntime's
# AVX2 kernel saturates and the goldens would depend on the machine that made them.
# Usage: models/make-demo.sh            (PYTHON=/path/to/python to choose the interpreter)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
for pair in classify:classifier tag:tagger embed:encoder; do
  task="${pair%%:*}"
  dir="${pair#*:}"
  echo "== models/demo/$dir (task $task)"
  "$py" "$here/export.py" --random-init --tiny --seed 0 --task "$task" --weight-type uint8 --quantization per-tensor --no-fp32 "$here/demo/$dir"
done
"$py" "$here/quantize.py" --check "$here/demo/classifier"
"$py" "$here/quantize.py" --check "$here/demo/tagger"
"$py" "$here/quantize.py" --check "$here/demo/encoder"
du -sh "$here"/demo/*
