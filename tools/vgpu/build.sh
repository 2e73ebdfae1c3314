#!/usr/bin/env bash
# Builds the virtual GPU: libcuda.so (driver.cpp + the host build of every
# kernels/*.cu, made by gen.py) and libcublasLt.so (cublaslt.cpp), into
# OUT_DIR/<hash of the sources>/, and prints that folder. Reuses a finished
# build of the same sources. The backend runs this on first use when
# LOVA_VGPU=1 (src/backend/cuda/vgpu.rs); .ci/run runs it ahead.
# Needs g++ >= 12 (_Float16, C++20) and python3.
# Usage: build.sh OUT_DIR [KERNELS_DIR]  (KERNELS_DIR: a modified copy, for mutants.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out_root=${1:?usage: build.sh OUT_DIR [KERNELS_DIR]}
kernels=${2:-$here/../../kernels}
hash=$(cat "$here"/build.sh "$here"/gen.py "$here"/*.h "$here"/*.cpp "$kernels"/*.cu "$kernels"/*.cuh | sha256sum | cut -c1-16)
out=$out_root/$hash
if [ -e "$out/libcuda.so" ] && [ -e "$out/libcublasLt.so" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$out_root"
work=$(mktemp -d "$out_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Kernel files: -fsanitize=alignment trapping turns a misaligned access into
# SIGILL, which the driver reports as CUDA_ERROR_MISALIGNED_ADDRESS. Objects
# are kept by the hash of what they are made from, so a changed kernel file
# (mutants.sh) recompiles only itself.
flags=(-std=c++20 -O2 -fPIC -g0 -fno-strict-aliasing -I"$here")
common=$(cat "$here"/build.sh "$here"/gen.py "$here"/*.h | sha256sum | cut -c1-16)
objdir=$out_root/objects
mkdir -p "$objdir"
objs=()
compile() {  # compile SOURCE.cpp OBJECT [extra flags]
    local src=$1 obj=$2
    shift 2
    [ -e "$obj" ] && return 0
    g++ "${flags[@]}" "$@" -c "$src" -o "$work/$(basename "$obj")" && mv "$work/$(basename "$obj")" "$obj"
}
for cu in "$kernels"/*.cu; do
    name=$(basename "$cu" .cu)
    python3 "$here/gen.py" "$cu" "$kernels/common.cuh" "$work/$name.cpp"
    obj=$objdir/$name-$(cat "$work/$name.cpp" | sha256sum | cut -c1-8)-$common.o
    compile "$work/$name.cpp" "$obj" -fsanitize=alignment -fsanitize-undefined-trap-on-error &
    objs+=("$obj")
done
for f in driver cublaslt; do
    compile "$here/$f.cpp" "$objdir/$f-$(sha256sum <"$here/$f.cpp" | cut -c1-8)-$common.o" &
done
wait
driver_o=$objdir/driver-$(sha256sum <"$here/driver.cpp" | cut -c1-8)-$common.o
cublaslt_o=$objdir/cublaslt-$(sha256sum <"$here/cublaslt.cpp" | cut -c1-8)-$common.o
for o in "${objs[@]}" "$driver_o" "$cublaslt_o"; do
    [ -e "$o" ] || { echo "vgpu/build.sh: compiling $(basename "$o") failed" >&2; exit 1; }
done
# The sonames are the names cudarc asks the dynamic loader for first
# (`libcuda.so`, `libcublasLt.so`), so that once these are loaded by path the
# loader hands them out for those names.
g++ -shared -Wl,-soname,libcuda.so -Wl,--no-undefined "${objs[@]}" "$driver_o" -o "$work/libcuda.so" -pthread
g++ -shared -Wl,-soname,libcublasLt.so "$cublaslt_o" -L"$work" -l:libcuda.so -Wl,-rpath,'$ORIGIN' \
    -o "$work/libcublasLt.so"
mkdir -p "$out"
mv "$work/libcuda.so" "$work/libcublasLt.so" "$out/"
echo "$out"
