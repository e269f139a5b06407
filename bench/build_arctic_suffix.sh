#!/usr/bin/env bash
# Builds ArcticInference's C++ suffix tree (SuffixDecodingCache) for the CPU, without the rest
# of ArcticInference (which needs vLLM and a GPU), into bench/out/arctic, where
# bench/bench_suffix_replay.py finds it. Needs a C++20 compiler and cmake; pip fetches the
# sdist and nanobind.
#
#     bash bench/build_arctic_suffix.sh [VERSION]      # default 0.3.0
set -euo pipefail
version="${1:-0.3.0}"
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/arctic"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip install --quiet "nanobind>=2"
# --no-build-isolation: only the sdist is wanted, not its (vLLM) build requirements
python -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "arctic-inference==$version" -d "$work"
tar -xzf "$work"/arctic_inference-"$version".tar.gz -C "$work"
src="$work/arctic_inference-$version"
cmake -S "$src/csrc/suffix_decoding" -B "$work/build" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$work/build" -j 2 >/dev/null
rm -rf "$out"
mkdir -p "$out/arctic_inference/suffix_decoding"
: > "$out/arctic_inference/__init__.py"
cp "$src/arctic_inference/suffix_decoding/__init__.py" "$src/arctic_inference/suffix_decoding/cache.py" "$out/arctic_inference/suffix_decoding/"
cp "$work"/build/_C*.so "$out/arctic_inference/suffix_decoding/"
echo "$version" > "$out/VERSION"
PYTHONPATH="$out" python -c "from arctic_inference.suffix_decoding import SuffixDecodingCache; SuffixDecodingCache(24, 0)"
echo "ArcticInference $version suffix tree built in $out"
