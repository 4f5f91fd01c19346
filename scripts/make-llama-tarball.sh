#!/usr/bin/env bash
# Make a stripped llama.cpp source tarball for air-gapped GPU boxes (no package index there).
#
# It takes the llama.cpp vendored in the pinned llama-cpp-python sdist (the same source
# `abtest server install` builds), drops what building llama-server + llama-bench does not need
# (models/, docs/, tools/ui/src, tools/ui/tests, benches/, examples/, conversion/, the gitlink),
# writes a .abtest-source marker (sdist version, llama.cpp commit and build number, so the binary's
# --version says what a build from the sdist says and the build id carries the sdist version), packs it reproducibly (same bytes, same sha256,
# same build id on every machine), and checks that cmake still configures the packed tree.
#
# usage: scripts/make-llama-tarball.sh [-o OUT.tgz] [--sdist PATH] [--no-check]
#   then, on the GPU box:  abtest server install --cuda --source OUT.tgz
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

here="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^LLAMA_CPP_PYTHON_VERSION = "\(.*\)"$/\1/p' "$here/abtest/server/builds.py")"
[ -n "$version" ] || { echo "make-llama-tarball: LLAMA_CPP_PYTHON_VERSION not found in abtest/server/builds.py" >&2; exit 2; }
out=""
sdist=""
check=1
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--output) out="$2"; shift 2 ;;
    --sdist) sdist="$2"; shift 2 ;;
    --no-check) check=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "make-llama-tarball: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-python3}"
cache="${ABTEST_CACHE:-$HOME/.cache/abtest}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/llama-tarball.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# 1. The sdist: --sdist, else abtest's cache, else pip (the one network step).
if [ -z "$sdist" ]; then
  sdist="$cache/sdist/llama_cpp_python-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    echo "downloading llama-cpp-python==$version sdist" >&2
    "$python" -m pip download --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$tmp/dl" >&2
    sdist="$(ls "$tmp"/dl/llama_cpp_python-*.tar.gz)"
  fi
fi
[ -f "$sdist" ] || { echo "make-llama-tarball: no sdist at $sdist; pass --sdist PATH" >&2; exit 2; }

# 2. Extract only the vendored llama.cpp and, of the submodule's git dir (39 MB), HEAD (the commit it
#    is at) and shallow (a depth-1 clone: llama.cpp's cmake would stamp "build 1").
top="llama_cpp_python-$version"
gitdir="$top/.git/modules/vendor/llama.cpp"
tar -xzf "$sdist" -C "$tmp" --exclude="$top/vendor/llama.cpp/.git" "$top/vendor/llama.cpp" "$gitdir/HEAD" "$gitdir/shallow"
src="$tmp/$top/vendor/llama.cpp"
commit="$(tr -d '[:space:]' < "$tmp/$gitdir/HEAD")"
case "$commit" in
  [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]*) ;;
  *) echo "make-llama-tarball: unexpected submodule HEAD '$commit' in $sdist" >&2; exit 2 ;;
esac

# 3. Strip. tools/ui stays (tools/CMakeLists.txt adds it with the server); examples/ and pocs/ are
#    only added when LLAMA_BUILD_EXAMPLES=ON, which abtest never sets.
rm -rf "$src/models" "$src/docs" "$src/tools/ui/src" "$src/tools/ui/tests" \
       "$src/benches" "$src/examples" "$src/conversion" "$src/.git"
printf 'llama-cpp-python %s\nllama.cpp commit %s\n' "$version" "$commit" > "$src/.abtest-source"
if grep -qx "$commit" "$tmp/$gitdir/shallow"; then
  echo "llama.cpp build 1" >> "$src/.abtest-source"
fi
mv "$src" "$tmp/llama.cpp"

# 4. Pack reproducibly.
[ -n "$out" ] || out="llama.cpp-$version-${commit:0:7}.tgz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='@0' \
    -C "$tmp" -cf - llama.cpp | gzip -n -9 > "$out.part"
mv "$out.part" "$out"

# 5. Check the packed tree still configures with abtest's flags (no build: that is minutes).
if [ "$check" = 1 ]; then
  command -v cmake >/dev/null || { echo "make-llama-tarball: cmake not on PATH; install it or pass --no-check" >&2; exit 2; }
  mkdir "$tmp/check"
  tar -xzf "$out" -C "$tmp/check"
  # The same flags as abtest.server.cmake_flags (read from it when abtest is importable), one per
  # line: a flag may hold spaces (-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 ...).
  if ! mapfile -t flags < <(PYTHONPATH="$here" "$python" -c \
      'from abtest.server import cmake_flags; print("\n".join(cmake_flags("cpu")))' 2>/dev/null) \
      || [ "${#flags[@]}" -eq 0 ]; then
    flags=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
           -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF)
  fi
  if ! cmake -S "$tmp/check/llama.cpp" -B "$tmp/check/build" "${flags[@]}" > "$tmp/configure.log" 2>&1; then
    tail -n 20 "$tmp/configure.log" >&2
    echo "make-llama-tarball: cmake could not configure the stripped tree (log above); $out is not usable" >&2
    rm -f "$out"
    exit 1
  fi
  echo "cmake configure of the stripped tree: ok" >&2
fi

size="$(du -h "$out" | cut -f1)"
sha="$(sha256sum "$out" | cut -d' ' -f1)"
echo "llama-cpp-python $version, llama.cpp ${commit:0:7}: $size, sha256 $sha" >&2
echo "$out"
