#!/usr/bin/env bash
# Set up sft-hub in ./.venv: FFmpeg for audio decoding (Debian/Ubuntu, when root), then the package with
# pinned torch/torchvision (constraints.txt) and TensorBoard. `--dev` adds the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="demo,audio,tensorboard"
[ "${1:-}" = "--dev" ] && extras="dev,demo,audio,tensorboard,deepspeed"

if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else
    echo "note: FFmpeg not found; audio recipes need it (e.g. sudo apt-get install ffmpeg)" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"  # DeepSpeed: no CUDA ops at install
echo "sft-hub installed in .venv ($(.venv/bin/python -c 'import sft_hub; print(sft_hub.__version__)'))"
