#!/usr/bin/env bash
# Download (here, where the package registries are reachable) the pure-Python and manylinux wheels that
# crdtool needs and the GPU machine's image lacks, into .whl/ (git-ignored), for `carry: [".whl"]`.
# The image already has torch, numpy, scipy, onnx, onnxruntime, onnxscript, safetensors, typer, rich,
# pillow and matplotlib; it lacks pydantic (and fvcore, which only `crdtool profile` imports, and which
# PyPI ships as an sdist only, so it cannot travel as a wheel).
set -euo pipefail
cd "$(dirname "$0")/../.."
want=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.7.0 typing-inspection==0.4.5 typing_extensions==4.16.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${want[@]}"
ls -l .whl
