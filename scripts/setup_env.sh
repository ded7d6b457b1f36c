#!/usr/bin/env bash
# One set-up command for a fresh Python 3.11 machine (see README).
# torch/torchvision are pinned as a pair known to import together here; basicsr 1.4.2's setup.py
# imports torch while it builds, so the project is installed without build isolation after torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.14.1 torchvision==0.29.1
python -m pip install --no-build-isolation -e ".[depth,test]"
