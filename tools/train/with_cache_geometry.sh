#!/usr/bin/env bash
# Run a command as if the CPU had other data caches, so that candle's CPU
# matrix products block their sums as they would on that CPU.
#
#     tools/train/with_cache_geometry.sh L1D L2 L3 -- COMMAND [ARG…]
#     tools/train/with_cache_geometry.sh 48K/12 2048K/16 491520K/16 -- \
#         calico train --preset tiny-staged --data mixedparts/train.jsonl --out runs/tiny
#
# Each level is SIZE/WAYS (SIZE in bytes or with a K, M or G suffix, as
# Linux writes it under /sys/devices/system/cpu/cpu*/cache). The `gemm` crate under candle
# reads those files once per process and sizes the K blocks of every float
# product from the L1 data cache (docs/training.md, "Reproducing a run on
# another CPU"); a run's `machine.json` records what its process read
# (`matmul.l1d`, `.l2`, `.l3`), so passing those values here makes another
# x86-64 machine add in the same order as the one that trained the run.
#
# The command runs in a private mount namespace in which each CPU's cache
# directory is replaced by one describing the given caches; nothing outside
# the command sees it. As root this needs `unshare --mount`; otherwise an
# unprivileged user namespace (`unshare --user --map-root-user`), which some
# kernels disable. The hardware is untouched: only what programs read about
# it changes (and with gemm's blocks, a little of their speed).
#
# Exit status: the command's, or 2 for a bad argument and 1 when the
# namespace or the mounts cannot be made.
set -euo pipefail

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 5 ] || usage
L1D=$1 L2=$2 L3=$3
[ "$4" = "--" ] || usage
shift 4

parse() { # NAME LEVEL SPEC: sets NAME_SIZE and NAME_WAYS, or exits 2
    local name=$1 level=$2 spec=$3
    if [[ ! $spec =~ ^([0-9]+[KMG]?)/([0-9]+)$ ]]; then
        echo "with_cache_geometry.sh: $level: expected SIZE/WAYS such as 48K/12, got \`$spec'" >&2
        exit 2
    fi
    printf -v "${name}_SIZE" %s "${BASH_REMATCH[1]}"
    printf -v "${name}_WAYS" %s "${BASH_REMATCH[2]}"
}
parse L1D L1d "$L1D"
parse L2 L2 "$L2"
parse L3 L3 "$L3"

SYS=/sys/devices/system/cpu
CPUS=()
for d in "$SYS"/cpu[0-9]*; do
    [ -d "$d/cache" ] && CPUS+=("$(basename "$d")")
done
if [ ${#CPUS[@]} -eq 0 ]; then
    echo "with_cache_geometry.sh: no $SYS/cpu*/cache directories on this machine" >&2
    exit 1
fi
ALL="0-$((${#CPUS[@]} - 1))"

FAKE=$(mktemp -d "${TMPDIR:-/tmp}/cache-geometry.XXXXXX")
trap 'rm -rf "$FAKE"' EXIT
write_index() { # CPU INDEX LEVEL TYPE SIZE WAYS SHARED
    local d="$FAKE/$1/index$2"
    mkdir -p "$d"
    echo "$3" >"$d/level"
    echo "$4" >"$d/type"
    echo "$5" >"$d/size"
    echo "$6" >"$d/ways_of_associativity"
    echo 64 >"$d/coherency_line_size"
    echo "$7" >"$d/shared_cpu_list"
}
for cpu in "${CPUS[@]}"; do
    n=${cpu#cpu}
    write_index "$cpu" 0 1 Data "$L1D_SIZE" "$L1D_WAYS" "$n"
    write_index "$cpu" 1 2 Unified "$L2_SIZE" "$L2_WAYS" "$n"
    write_index "$cpu" 2 3 Unified "$L3_SIZE" "$L3_WAYS" "$ALL"
done

if [ "$(id -u)" -eq 0 ]; then
    NS=(unshare --mount --propagation private)
else
    NS=(unshare --user --map-root-user --mount --propagation private)
fi
# Inside: bind every fake directory over its CPU's, check one, then run.
INNER='
fake=$1; shift
for d in "$fake"/cpu*; do
    mount --bind "$d" "/sys/devices/system/cpu/$(basename "$d")/cache" || exit 1
done
seen=$(cat /sys/devices/system/cpu/cpu0/cache/index0/size)/$(cat /sys/devices/system/cpu/cpu0/cache/index0/ways_of_associativity)
[ "$seen" = "$L1D_WANT" ] || { echo "with_cache_geometry.sh: the mounts did not take (L1d reads $seen)" >&2; exit 1; }
exec "$@"
'
export L1D_WANT="$L1D_SIZE/$L1D_WAYS"
set +e
"${NS[@]}" bash -c "$INNER" with_cache_geometry "$FAKE" "$@"
status=$?
set -e
exit $status
