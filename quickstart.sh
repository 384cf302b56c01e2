#!/usr/bin/env bash
# Quickstart: from a fresh clone to classifying a video in the browser, in one command.
#   1. create .venv (if absent) and install the project (CPU build)
#   2. generate the synthetic motion dataset
#   3. train the tiny preset on it (python -m train synthetic)
#   4. export an ONNX bundle (stadapter-export)
#   5. start the Gradio demo on the bundle and print its URL
# Each step is skipped when its output already exists; delete the run directory to start over.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
Usage: ./quickstart.sh [options]

  --no-serve        run steps 1-4 and print the demo command instead of starting it
                    (also: QUICKSTART_SERVE=0)
  --epochs N        train for N epochs instead of the recipe's default (also: QUICKSTART_EPOCHS)
  --fast            the shortened form CI runs: a small dataset and 1 epoch (also: QUICKSTART_FAST=1)
  --clip PATH       train on real CLIP weights (OpenAI .pt or Hugging Face safetensors) instead of the
                    tiny random backbone; uses --preset (default vit_b16_adapter12x384; a GPU makes
                    this practical, on 2 CPU cores it takes hours)
  --preset NAME     model preset for --clip, e.g. vit_l14_adapter24x384 for ViT-L/14 weights
  --dir DIR         run directory (default: runs/quickstart; the bundle goes to DIR/bundle)
  --data DIR        synthetic dataset directory (default: runs/synthetic-data)
  --host HOST       demo address (default: 127.0.0.1)
  --port PORT       demo port (default: 7860)
  -h, --help        show this help

Environment: PYTHON (interpreter for the venv, default python3), QUICKSTART_VENV (default .venv).
EOF
}

SERVE="${QUICKSTART_SERVE:-1}"
EPOCHS="${QUICKSTART_EPOCHS:-}"
FAST="${QUICKSTART_FAST:-0}"
CLIP=""
PRESET=""
RUN_DIR="runs/quickstart"
DATA_DIR="runs/synthetic-data"
HOST="127.0.0.1"
PORT="7860"
VENV="${QUICKSTART_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-serve) SERVE=0 ;;
    --epochs) EPOCHS="$2"; shift ;;
    --fast) FAST=1 ;;
    --clip) CLIP="$2"; shift ;;
    --preset) PRESET="$2"; shift ;;
    --dir) RUN_DIR="$2"; shift ;;
    --data) DATA_DIR="$2"; shift ;;
    --host) HOST="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -n "$CLIP" && ! -f "$CLIP" ]]; then
  echo "quickstart: --clip $CLIP: no such file" >&2
  exit 2
fi

NUM_TRAIN=""
NUM_VAL=""
if [[ "$FAST" == "1" ]]; then
  EPOCHS="${EPOCHS:-1}"
  NUM_TRAIN=48
  NUM_VAL=24
fi

START=$SECONDS
step() { printf '\n==> [%s/5] %s  (%ds so far)\n' "$1" "$2" "$((SECONDS - START))"; }
skip() { printf '    skipped: %s\n' "$1"; }

# 1. Environment ------------------------------------------------------------------------------------------------
step 1 "Python environment in $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
# -I ignores the current directory, so this finds the packages only when the project is really installed.
INSTALLED_CHECK='import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("stadapter_deploy", "onnxruntime", "gradio", "demo", "train", "export")))'
if "$VENV/bin/python" -I -c "$INSTALLED_CHECK" 2>/dev/null && [[ -x "$VENV/bin/stadapter-export" ]]; then
  skip "project already installed in $VENV"
else
  "$VENV/bin/python" -m pip install --progress-bar on -e ".[cpu]"
fi
PY="$VENV/bin/python"

# 2. Data -------------------------------------------------------------------------------------------------------
step 2 "Synthetic motion dataset in $DATA_DIR"
if [[ -f "$DATA_DIR/train.txt" && -f "$DATA_DIR/val.txt" ]]; then
  skip "$DATA_DIR/train.txt exists"
else
  "$PY" - "$DATA_DIR" "$NUM_TRAIN" "$NUM_VAL" <<'EOF'
import sys

from stadapter_deploy.video.synthetic import make_synthetic_dataset

root, num_train, num_val = sys.argv[1], sys.argv[2], sys.argv[3]
sizes = {"num_train": int(num_train), "num_val": int(num_val)} if num_train else {}
print("    wrote", make_synthetic_dataset(root, **sizes))
EOF
fi

# 3. Train ------------------------------------------------------------------------------------------------------
step 3 "Train (python -m train synthetic) into $RUN_DIR"
if [[ -f "$RUN_DIR/final/config.json" ]]; then
  skip "$RUN_DIR/final exists"
else
  train_args=(synthetic --save-dir "$RUN_DIR" --data-root "$DATA_DIR" --auto-resume)  # an interrupted run continues
  [[ -n "$EPOCHS" ]] && train_args+=(--epochs "$EPOCHS")
  if [[ -n "$CLIP" ]]; then
    train_args+=(--clip "$CLIP" --preset "${PRESET:-vit_b16_adapter12x384}")
  elif [[ -n "$PRESET" ]]; then
    train_args+=(--preset "$PRESET")
  fi
  "$PY" -m train "${train_args[@]}"
fi

# 4. Export -----------------------------------------------------------------------------------------------------
BUNDLE="$RUN_DIR/bundle"
step 4 "Export an ONNX bundle (stadapter-export) to $BUNDLE"
if [[ -f "$BUNDLE/manifest.json" ]]; then
  skip "$BUNDLE/manifest.json exists"
else
  "$VENV/bin/stadapter-export" --checkpoint "$RUN_DIR/final" --out "$BUNDLE"
fi

# 5. Demo -------------------------------------------------------------------------------------------------------
DEMO_CMD=("$PY" -m demo --bundle "$BUNDLE" --host "$HOST" --port "$PORT")
if [[ "$SERVE" == "0" ]]; then
  step 5 "Demo (not started: --no-serve)"
  printf '    start it with: %s\n' "${DEMO_CMD[*]}"
  printf '\nQuickstart done in %ds. Bundle: %s\n' "$((SECONDS - START))" "$BUNDLE"
  exit 0
fi
step 5 "Start the demo at http://$HOST:$PORT/ (Ctrl+C to stop)"
exec "${DEMO_CMD[@]}"
