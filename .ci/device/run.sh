#!/usr/bin/env bash
# The CUDA tests and dnax bench data / all on the GPU machine (issues 18, 23), from a copy of
# this repository.
#
# That machine has no network and its own Python with torch, timm, rich, typer, pluggy, attrs,
# safetensors, onnx, onnxruntime and scipy, but no cattrs, no tomli-w (and maybe no
# scikit-learn). This script brings them from the repository and installs nothing into that
# Python: everything goes to a scratch folder put on PYTHONPATH.
#   - .ci/device/wheels/: pure-python wheels of cattrs and tomli-w, with the attrs and
#     typing_extensions versions cattrs needs (the versions CI runs; they shadow older ones);
#   - .ci/device/shim/: scikit-learn's load_digits and its data file, used only where
#     `import sklearn` fails;
#   - dnax itself: `pip install --no-deps --no-build-isolation --no-index --target` (needs
#     setuptools there), else a copy of the package layout pyproject.toml maps (core/ is dnax,
#     cli/ is dnax.cli, ...): a plain PYTHONPATH of the checkout cannot import it.
#
# Usage: .ci/device/run.sh [DIR] [OPTIONS of dnax bench all ...]
#   DIR      bench.json, bench.md, console.txt and the parts' files (default: $OUT/bench, the
#            device tool's folder that comes back, else runs/bench)
#   OPTIONS  passed on to dnax bench all after `--deadline 200` (a later --deadline wins),
#            e.g. --parts train,rank
# Environment: PYTHON (default python3); DNAX_DEVICE_INSTALL=copy skips the pip build of dnax;
#   DNAX_FASHION_MNIST: folder of Fashion-MNIST's four gzip files (default
#   .ci/device/fashion-mnist, carried; else the Debian package's folder);
#   DNAX_DEVICE_TESTS_S / _DATA_S / _BENCH_S: the steps' time limits (60, 40, 200 s: 5 min);
#   DNAX_DEVICE_PARTS: the parts of dnax bench all (digits,rank,paper-rank; paper-rank gets
#   60 s and extrapolates); DNAX_DEVICE_DATA_ARGS: more options of dnax bench data.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
py=${PYTHON:-python3}
out=${OUT:-$repo/runs}/bench
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out=${1:-$out}; shift; fi  # DIR, not an option
site=$(mktemp -d "${TMPDIR:-/tmp}/dnax-device.XXXXXX")
trap 'rm -rf "$site"' EXIT
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
wheels=.ci/device/wheels

# 1. cattrs, tomli-w and the attrs / typing_extensions they need, from the carried wheels
if "$py" -m pip --version >/dev/null 2>&1; then
  "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$site" \
    "$wheels"/*.whl
else  # no pip: a pure-python wheel is a zip of what site-packages holds
  for w in "$wheels"/*.whl; do "$py" -m zipfile -e "$w" "$site"; done
fi

# 2. scikit-learn's digits, where scikit-learn is missing (after the path: a real one wins)
if ! "$py" -c "import sklearn.datasets" >/dev/null 2>&1; then
  echo "note: no scikit-learn here: load_digits comes from .ci/device/shim" >&2
  export PYTHONPATH="$PYTHONPATH:$repo/.ci/device/shim"
fi

# 3. dnax, without its dependencies (the machine's torch, timm, ... stay)
if [ "${DNAX_DEVICE_INSTALL:-pip}" = pip ] && "$py" -m pip install -q \
    --disable-pip-version-check --no-deps --no-build-isolation --no-index --target "$site" \
    "$repo" >"$site/pip-dnax.log" 2>&1; then
  echo "dnax: built with pip into $site" >&2
else
  if [ "${DNAX_DEVICE_INSTALL:-pip}" = pip ]; then
    echo "note: pip could not build dnax here; copying its package layout instead:" >&2
    grep -m 3 -i "error" "$site/pip-dnax.log" >&2 || true
  fi
  "$py" - "$repo" "$site" <<'EOF'
import shutil
import sys
import tomllib
from pathlib import Path

repo, site = map(Path, sys.argv[1:])
project = tomllib.loads((repo / "pyproject.toml").read_text())
dirs = project["tool"]["setuptools"]["package-dir"]
for package in sorted(dirs, key=len):  # dnax first, then dnax.cli, dnax.plugins, ...
    shutil.copytree(repo / dirs[package], site.joinpath(*package.split(".")),
                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
version = project["project"]["version"]
info = site / f"dnax-{version}.dist-info"  # for importlib.metadata.version("dnax")
info.mkdir()
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: dnax\nVersion: {version}\n")
EOF
fi

"$py" - <<'EOF' >&2
import cattrs, tomli_w, torch  # noqa: F401
import dnax
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"dnax {dnax.__version__} from {dnax.__file__}; torch {torch.__version__}; GPU: {gpu}")
EOF

# 4. the CUDA tests (every stage under AMP, the tree walk under autocast, NCCL, the export of a
#    CUDA-trained model, data on the device), then `dnax bench data`, then `dnax bench all`
#    (the digits pipeline end to end and the bench parts) under its own deadline: within 5
#    minutes in all. Any failure makes the exit status non-zero, after every step has run.
mkdir -p "$out"
failed=()
step() {  # step NAME COMMAND...: run it, its output into $out/NAME.txt, remember a failure
  local name=$1; shift
  echo "== $name: $*" >&2
  set +e
  "$@" 2>&1 | tee "$out/$name.txt"
  local status=${PIPESTATUS[0]}
  set -e
  echo "== $name: exit $status" >&2
  [ "$status" -eq 0 ] || failed+=("$name (exit $status)")
}
fmnist=${DNAX_FASHION_MNIST:-$repo/.ci/device/fashion-mnist}
[ -d "$fmnist" ] || fmnist=/usr/share/datasets/fashion-mnist
# shellcheck disable=SC2086  # DNAX_DEVICE_DATA_ARGS: more options of dnax bench data
step cuda-tests timeout "${DNAX_DEVICE_TESTS_S:-60}" "$py" -m pytest -q -m cuda \
  -p no:cacheprovider tests/integration/test_cuda.py
step bench-data timeout "${DNAX_DEVICE_DATA_S:-40}" "$py" -m dnax bench data \
  --source "$fmnist" --output "$out/data.json" ${DNAX_DEVICE_DATA_ARGS:-}
step bench-all "$py" -m dnax bench all --output "$out" --deadline "${DNAX_DEVICE_BENCH_S:-200}" \
  --pipeline docs/examples/digits.toml --parts "${DNAX_DEVICE_PARTS:-digits,rank,paper-rank}" \
  --budget paper-rank=60 "$@"
cat "$out/bench.md" 2>/dev/null || echo "(no bench.md)" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "device run FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "device run passed: cuda tests, bench data, bench all" >&2
