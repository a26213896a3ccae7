#!/usr/bin/env bash
# Sets up FBGEMM's CPU build next to PyTorch in .venv-fbgemm (PyPI), for scripts/bench-fbgemm.py
# (dlrs's int8 embedding stage against FBGEMM's int8 TBE). The Rust build and tests need none of it.
#
# Versions: each fbgemm-gpu-cpu release is built against one PyTorch minor release
# (fbgemm_gpu/__init__.py carries the table and warns on any other torch: 1.9 -> 2.14,
# 1.8 -> 2.13, ...). fbgemm-gpu-cpu 1.9.0 is the newest on PyPI; torch 2.14.1 is the newest 2.14.
# PyPI's Linux torch wheel is the CUDA build (it pulls ~3 GB of nvidia-* wheels; the CPU-only
# wheels live on PyTorch's own index, which these machines do not reach); it runs on CPU as is.
#
# LD_PRELOAD: fbgemm_gpu's fbgemm.so leaves the cpuinfo symbols (cpuinfo_initialize,
# cpuinfo_isa, ...) undefined. Loaded as torch 2.14.1 + fbgemm-gpu-cpu 1.9.0 load it, the
# dynamic linker binds them to libc10.so's copy (LD_DEBUG=bindings shows it), and
# fbgemm::fbgemmInstructionSet() then reports `anyarch`: no AVX2, no AVX-512, every embedding
# bag goes through FBGEMM's scalar reference path. With LD_PRELOAD=<torch>/lib/libtorch.so they
# bind to libtorch.so's copy and FBGEMM reports avx512_vnni on this machine kind (AMD EPYC with
# AVX-512). scripts/bench-fbgemm.py asks FBGEMM itself at every run (ctypes call of
# fbgemmInstructionSet in a fresh process), preloads only when needed, and also times one point
# without the preload. The check below prints what it finds here.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.14.1
FBGEMM=1.9.0
if [ ! -x .venv-fbgemm/bin/python ]; then
  python3 -m venv .venv-fbgemm
fi
if ! .venv-fbgemm/bin/python - "$TORCH" "$FBGEMM" 2>/dev/null <<'EOF'
import sys
import fbgemm_gpu, numpy, safetensors, torch
assert torch.__version__.split("+")[0] == sys.argv[1] and fbgemm_gpu.__version__ == sys.argv[2]
EOF
then
  .venv-fbgemm/bin/pip install --quiet "torch==$TORCH" "fbgemm-gpu-cpu==$FBGEMM" "safetensors==0.8.0" "numpy==2.4.6"
fi
# which instruction set FBGEMM picks, without and with the preload
.venv-fbgemm/bin/python scripts/bench-fbgemm.py --probe
