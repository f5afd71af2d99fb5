#!/bin/bash
# Wheels for a machine with no package registry whose Python already has jax, flax, optax, orbax,
# transformers, tokenizers, safetensors, pillow, tqdm and absl-py (the lent GPU machine: Python
# 3.12, x86-64; docs/training.md "On a machine without a package registry"): what the trainers
# and datagen import beyond those (ml_collections, grain, tensorflow-datasets) and their
# dependencies, pinned, about 12 MB. Run here, where a registry is reachable:
#
#     bash tools/offline_wheels.sh [DIR (default .wheels)] [PYTHON_VERSION (default 3.12)]
#
# then, there (DIR travels with the code; .wheels is git-ignored):
#
#     pip install --no-index --no-deps .wheels/*.whl
set -euo pipefail
dir=${1:-.wheels}
py=${2:-3.12}
mkdir -p "$dir"
pins=(ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0
      etils==1.15.0 protobuf==7.36.2 tensorflow-datasets==4.9.10 dm-tree==0.1.10
      immutabledict==4.3.1 psutil==7.2.2 simple_parsing==0.1.9 docstring_parser==0.18.0
      tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2 wrapt==2.5.2
      requests==2.34.2 urllib3==2.8.0 idna==3.20 charset_normalizer==3.5.3
      certifi==2026.10.19.post1)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64 any; do
  platforms+=(--platform "$p")
done
pip download --no-deps --only-binary=:all: --python-version "$py" "${platforms[@]}" -d "$dir" "${pins[@]}"
# promise (imported by tensorflow-datasets) and six ship as source only: build pure-Python wheels.
pip wheel --no-deps -w "$dir" promise==2.3 six==1.17.0
du -sh "$dir"
