#!/usr/bin/env bash
# Quickstart: from a fresh clone to classifying a video in the browser, in one command.
#   1. create .venv (if absent) and install the project (CPU build)
#   2. generate the synthetic motion dataset
#   3. train on it (python -m train synthetic)
#   4. export an ONNX bundle (stadapter-export)
#   5. start the Gradio demo on the bundle and print its URL
# Each mode (full, --fast, --clip) keeps its data, run and bundle in a folder of its own, and a step is
# skipped only when its output is what this mode makes: the folder records the settings it was made with.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
Usage: ./quickstart.sh [options]

  --no-serve        run steps 1-4 and print the demo command instead of starting it
                    (also: QUICKSTART_SERVE=0)
  --epochs N        train for N epochs instead of the recipe's 8 (also: QUICKSTART_EPOCHS)
  --fast            the shortened form CI runs: 72 clips (48 train, 24 val) and 1 epoch
                    (also: QUICKSTART_FAST=1)
  --clip PATH       train on real CLIP weights (OpenAI .pt, open_clip, Hugging Face safetensors) instead of
                    the tiny random backbone; the architecture is the one the file holds (a GPU makes this
                    practical, on 2 CPU cores it takes hours)
  --preset NAME     a model preset instead (with --clip: one that fits the file, e.g. vit_l14_adapter24x384)
  --dir DIR         run folder: training output, data/ and bundle/ (default: runs/quickstart, or
                    runs/quickstart-fast, runs/quickstart-clip, runs/quickstart-clip-fast for those modes)
  --data DIR        synthetic dataset folder (default: DIR/data)
  --host HOST       demo address (default: 127.0.0.1)
  --port PORT       demo port (default: 7860)
  -h, --help        show this help

A step is skipped when its output exists and was made with these settings; a folder made with other
settings is refused (delete it, or pick another --dir / --data).
Environment: PYTHON (interpreter for the venv, default python3), QUICKSTART_VENV (default .venv).
EOF
}

fail() {
  echo "quickstart: $*" >&2
  exit 2
}

SERVE="${QUICKSTART_SERVE:-1}"
EPOCHS="${QUICKSTART_EPOCHS:-}"
FAST="${QUICKSTART_FAST:-0}"
CLIP=""
PRESET=""
RUN_DIR=""
DATA_DIR=""
HOST="127.0.0.1"
PORT="7860"
VENV="${QUICKSTART_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

while [[ $# -gt 0 ]]; do
  option="$1"
  case "$option" in
    --epochs | --clip | --preset | --dir | --data | --host | --port)
      [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || fail "$option needs a value (see --help)"
      value="$2"
      shift
      ;;
  esac
  case "$option" in
    --no-serve) SERVE=0 ;;
    --fast) FAST=1 ;;
    --epochs) EPOCHS="$value" ;;
    --clip) CLIP="$value" ;;
    --preset) PRESET="$value" ;;
    --dir) RUN_DIR="$value" ;;
    --data) DATA_DIR="$value" ;;
    --host) HOST="$value" ;;
    --port) PORT="$value" ;;
    -h | --help) usage; exit 0 ;;
    *) fail "unknown option '$option' (see --help)" ;;
  esac
  shift
done

# Every option checked before any work, each in one line.
[[ "$SERVE" == "0" || "$SERVE" == "1" ]] || fail "QUICKSTART_SERVE must be 0 or 1, got '$SERVE'"
[[ "$FAST" == "0" || "$FAST" == "1" ]] || fail "QUICKSTART_FAST must be 0 or 1, got '$FAST'"
if [[ -n "$EPOCHS" && ! "$EPOCHS" =~ ^[1-9][0-9]*$ ]]; then
  fail "--epochs (or QUICKSTART_EPOCHS) must be a whole number of at least 1, got '$EPOCHS'"
fi
if ! [[ "$PORT" =~ ^[1-9][0-9]{0,4}$ && "$PORT" -le 65535 ]]; then
  fail "--port must be a number from 1 to 65535, got '$PORT'"
fi
[[ -z "$CLIP" || -e "$CLIP" ]] || fail "--clip $CLIP: no such file"

MODE="full"
[[ -n "$CLIP" ]] && MODE="clip"
[[ "$FAST" == "1" ]] && MODE="$MODE-fast" && MODE="${MODE#full-}"
case "$MODE" in
  full) RUN_DIR="${RUN_DIR:-runs/quickstart}" ;;
  *) RUN_DIR="${RUN_DIR:-runs/quickstart-$MODE}" ;;
esac
DATA_DIR="${DATA_DIR:-$RUN_DIR/data}"
for folder in "$RUN_DIR" "$DATA_DIR"; do
  [[ ! -e "$folder" || -d "$folder" ]] || fail "$folder is a file, not a folder"
done

NUM_TRAIN=600
NUM_VAL=120
if [[ "$FAST" == "1" ]]; then
  EPOCHS="${EPOCHS:-1}"
  NUM_TRAIN=48
  NUM_VAL=24
fi

# What this mode makes, recorded beside what it made; a step's output counts only under the same record.
DATA_RECORD="synthetic motion clips: $NUM_TRAIN train / $NUM_VAL val, seed 0"
CLIP_RECORD="none"
if [[ -f "$CLIP" ]]; then
  CLIP_RECORD="$(cd "$(dirname "$CLIP")" && pwd)/$(basename "$CLIP") ($(wc -c <"$CLIP" | tr -d ' ') bytes)"
elif [[ -n "$CLIP" ]]; then  # a Hugging Face model folder
  CLIP_RECORD="$(cd "$CLIP" && pwd) ($(du -sk "$CLIP" | cut -f1) KB)"
fi
RUN_RECORD="mode: $MODE
data: $DATA_RECORD
epochs: ${EPOCHS:-recipe default}
clip: $CLIP_RECORD
preset: ${PRESET:-inferred}"

# A run folder made with other settings is refused before any work (its steps would be skipped wrongly).
if [[ -f "$RUN_DIR/quickstart-run.txt" ]]; then
  while IFS= read -r there; do
    here="$(grep "^${there%%:*}:" <<<"$RUN_RECORD" || true)"
    if [[ "$there" != "$here" ]]; then
      fail "$RUN_DIR was made with other settings ($there; this run: ${here#*: }): delete $RUN_DIR to start over, or pick another --dir"
    fi
  done <"$RUN_DIR/quickstart-run.txt"
elif [[ -e "$RUN_DIR/run.json" || -e "$RUN_DIR/final" || -e "$RUN_DIR/bundle" ]]; then
  fail "$RUN_DIR holds a run this quickstart did not record: delete it, or pick another --dir"
fi

# The same for the data: its record must be this mode's; a list without a record is taken only when it has
# the entries this mode makes (`python -m train synthetic` writes the same clips), never written over.
lines() { if [[ -f "$1" ]]; then grep -c . "$1" || true; else echo 0; fi; }
DATA_STATE="absent"
if [[ -f "$DATA_DIR/quickstart-data.txt" ]]; then
  made="$(cat "$DATA_DIR/quickstart-data.txt")"
  [[ "$made" == "$DATA_RECORD" ]] || fail "$DATA_DIR holds other data ($made); this run uses $NUM_TRAIN train / $NUM_VAL val clips: delete it, or pick another --data"
  DATA_STATE="made"
elif [[ -e "$DATA_DIR/train.txt" || -e "$DATA_DIR/val.txt" ]]; then
  if [[ "$(lines "$DATA_DIR/train.txt")" != "$NUM_TRAIN" || "$(lines "$DATA_DIR/val.txt")" != "$NUM_VAL" ]]; then
    fail "$DATA_DIR holds a dataset of $(lines "$DATA_DIR/train.txt") train / $(lines "$DATA_DIR/val.txt") val entries; this run uses $NUM_TRAIN / $NUM_VAL: pick another --data"
  fi
  DATA_STATE="made"
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
if [[ -n "$PRESET" ]]; then
  "$PY" - "$PRESET" <<'EOF' || exit 2
import sys

from stadapter_deploy.model.config import get_preset

try:
    get_preset(sys.argv[1])
except ValueError as e:
    sys.exit(f"quickstart: --preset: {e}")
EOF
fi
mkdir -p "$RUN_DIR"
echo "$RUN_RECORD" >"$RUN_DIR/quickstart-run.txt"

# 2. Data -------------------------------------------------------------------------------------------------------
step 2 "Synthetic motion dataset in $DATA_DIR"
if [[ "$DATA_STATE" == "absent" ]]; then
  "$PY" - "$DATA_DIR" "$NUM_TRAIN" "$NUM_VAL" <<'EOF'
import sys

from stadapter_deploy.video.synthetic import make_synthetic_dataset

root, num_train, num_val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("    wrote", make_synthetic_dataset(root, num_train=num_train, num_val=num_val, seed=0))
EOF
else
  skip "$DATA_DIR holds the $NUM_TRAIN train / $NUM_VAL val clips"
fi
echo "$DATA_RECORD" >"$DATA_DIR/quickstart-data.txt"

# 3. Train ------------------------------------------------------------------------------------------------------
step 3 "Train (python -m train synthetic) into $RUN_DIR"
TRAINED=0
if [[ -f "$RUN_DIR/final/config.json" ]]; then
  skip "$RUN_DIR/final exists"
else
  train_args=(synthetic --save-dir "$RUN_DIR" --data-root "$DATA_DIR" --auto-resume)  # an interrupted run continues
  [[ -n "$EPOCHS" ]] && train_args+=(--epochs "$EPOCHS")
  [[ -n "$CLIP" ]] && train_args+=(--clip "$CLIP")  # the architecture the file holds, unless --preset
  [[ -n "$PRESET" ]] && train_args+=(--preset "$PRESET")
  "$PY" -m train "${train_args[@]}"
  TRAINED=1
fi

# 4. Export -----------------------------------------------------------------------------------------------------
BUNDLE="$RUN_DIR/bundle"
step 4 "Export an ONNX bundle (stadapter-export) to $BUNDLE"
if [[ -f "$BUNDLE/manifest.json" && "$TRAINED" == "0" ]]; then
  skip "$BUNDLE/manifest.json exists"
else
  "$VENV/bin/stadapter-export" --checkpoint "$RUN_DIR/final" --out "$BUNDLE" --overwrite  # a new model: a new bundle
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
