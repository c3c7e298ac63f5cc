#!/usr/bin/env bash
# StreamRec device run: the CUDA libraries (libcuda, NVRTC, cuBLAS) for a machine without cargo.
# Copied next to run.sh by `cargo xtask device-bundle` (template: xtask/device/find-libs.sh) and
# sourced by it; tested with fake folders by xtask/tests/find_libs.rs.
#
#   . find-libs.sh; setup_cuda_libs; report_cuda_libs     (what run.sh does)
#   bash find-libs.sh                                     (alone: does both, then prints
#                                                          "LD_LIBRARY_PATH=<the result>")
#
# setup_cuda_libs
#   1. removes every `*/stubs` folder (and empty entries) from an inherited LD_LIBRARY_PATH:
#      cudarc asks for libcuda.so before libcuda.so.1, so the toolkit's stub libcuda.so would win
#      and every call fail with CUDA_ERROR_STUB_LIBRARY;
#   2. for each of libnvrtc.so.13, libcublas.so.13 and libcublasLt.so.13 that neither ldconfig's
#      cache nor a folder already on LD_LIBRARY_PATH has, appends the first folder that has it:
#      the toolkit ($CUDA_TOOLKIT_LIB_DIRS), then the `nvidia/cu13/lib` folders of every Python
#      (each python3 and python on PATH, then $PYTHON_CANDIDATES, asked where the `nvidia`
#      package is). The folder goes on LD_LIBRARY_PATH rather than a library being opened by
#      absolute path: libnvrtc.so.13 then fails to find libnvrtc-builtins.so.13.0.
# report_cuda_libs
#   prints, for libcuda, libnvrtc, libcublas and libcublasLt, the file the dynamic loader will
#   open for the names cudarc asks for (in its order), with warnings for a stub libcuda and for a
#   library that is not CUDA 13.
#
# Knobs:
#   CUDA_TOOLKIT_LIB_DIRS  default "/usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64"
#   PYTHON_CANDIDATES      more interpreters to ask (globs allowed), default
#                          "/opt/*/.venv/bin/python3 /opt/*/venv/bin/python3 /opt/conda/bin/python3
#                          $HOME/.venv/bin/python3"
#   ldconfig is the one on PATH, else /sbin/ldconfig or /usr/sbin/ldconfig.

CUDA_LIBS_NEEDED="libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13"

# ldconfig's cache (`ldconfig -p`), read once.
fl_ldcache() {
    if [ -z "${FL_LDCACHE_READ:-}" ]; then
        local bin
        bin=$(command -v ldconfig 2>/dev/null)
        if [ -z "$bin" ]; then
            for bin in /sbin/ldconfig /usr/sbin/ldconfig ""; do
                [ -n "$bin" ] && [ -x "$bin" ] && break
            done
        fi
        FL_LDCACHE=$([ -n "$bin" ] && "$bin" -p 2>/dev/null)
        FL_LDCACHE_READ=1
    fi
    printf '%s\n' "$FL_LDCACHE"
}

# The path ldconfig's cache gives for the library file name $1 (64-bit entries), or nothing.
fl_in_ldcache() {
    local line
    while IFS= read -r line; do
        line=${line#"${line%%[![:space:]]*}"}
        case $line in
            "$1 ("*64*") => "*)
                printf '%s\n' "${line##*=> }"
                return 0
                ;;
        esac
    done < <(fl_ldcache)
    return 1
}

# The first folder on LD_LIBRARY_PATH holding the file $1, or nothing.
fl_on_path() {
    local d parts
    IFS=: read -ra parts <<<"${LD_LIBRARY_PATH:-}"
    for d in "${parts[@]}"; do
        if [ -n "$d" ] && [ -e "$d/$1" ]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    return 1
}

# Removes `*/stubs` folders and empty entries (the current folder) from LD_LIBRARY_PATH.
fl_strip_stubs() {
    local d parts kept=""
    [ -n "${LD_LIBRARY_PATH+x}" ] || return 0
    IFS=: read -ra parts <<<"$LD_LIBRARY_PATH"
    for d in "${parts[@]}"; do
        case $d in
            "") ;;
            stubs | stubs/ | */stubs | */stubs/ | */stubs/*)
                echo "LD_LIBRARY_PATH: removed $d (a stub libcuda.so there would win: CUDA_ERROR_STUB_LIBRARY)"
                ;;
            *) kept=${kept:+$kept:}$d ;;
        esac
    done
    if [ -n "$kept" ]; then
        export LD_LIBRARY_PATH=$kept
    else
        unset LD_LIBRARY_PATH
    fi
}

# Appends folder $1 to LD_LIBRARY_PATH unless it is there already.
fl_add() {
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$1:"*) ;;
        *) export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$1 ;;
    esac
}

# Every Python interpreter to ask, one per line, each once (by resolved path).
fl_pythons() {
    local d n p real parts seen=" "
    local -a cands=()
    IFS=: read -ra parts <<<"${PATH:-}"
    for d in "${parts[@]}"; do
        for n in python3 python; do
            [ -n "$d" ] && cands+=("$d/$n")
        done
    done
    # Unquoted on purpose: the globs expand here.
    # shellcheck disable=SC2086
    for p in ${PYTHON_CANDIDATES-/opt/*/.venv/bin/python3 /opt/*/venv/bin/python3 /opt/conda/bin/python3 ${HOME:-/root}/.venv/bin/python3}; do
        cands+=("$p")
    done
    for p in "${cands[@]}"; do
        if ! { [ -f "$p" ] && [ -x "$p" ]; }; then continue; fi
        real=$(readlink -f "$p" 2>/dev/null || printf '%s' "$p")
        # pyenv and similar shims resolve to one script that runs different Pythons: keep each.
        case $p in */shims/*) real=$p ;; esac
        case $seen in *" $real "*) continue ;; esac
        seen="$seen$real "
        printf '%s\n' "$p"
    done
}

# Sets FL_PYDIRS to the existing `nvidia/cu13/lib` folders of every Python, one per line, each
# once; asks the interpreters only the first time (call it in the current shell, not in $(...)).
fl_read_python_dirs() {
    [ -z "${FL_PYDIRS_READ:-}" ] || return 0
    local py d
    local -a to=()
    command -v timeout >/dev/null 2>&1 && to=(timeout 15)
    FL_PYDIRS=""
    while IFS= read -r py; do
        while IFS= read -r d; do
            if ! { [ -n "$d" ] && [ -d "$d" ]; }; then continue; fi
            case $'\n'"$FL_PYDIRS" in *$'\n'"$d"$'\n'*) continue ;; esac
            FL_PYDIRS="$FL_PYDIRS$d"$'\n'
            echo "Python $py: $d"
        done < <("${to[@]}" "$py" -c 'import os, nvidia; print(*[os.path.join(p, "cu13", "lib") for p in nvidia.__path__], sep="\n")' 2>/dev/null </dev/null)
    done < <(fl_pythons)
    FL_PYDIRS_READ=1
}

# Strips stubs from LD_LIBRARY_PATH and adds the folders of NVRTC and cuBLAS where needed.
setup_cuda_libs() {
    local lib d hit
    local -a dirs
    fl_strip_stubs
    for lib in $CUDA_LIBS_NEEDED; do
        if hit=$(fl_in_ldcache "$lib"); then
            echo "$lib: in ldconfig's cache ($hit)"
            continue
        fi
        if hit=$(fl_on_path "$lib"); then
            echo "$lib: already on LD_LIBRARY_PATH ($hit)"
            continue
        fi
        # shellcheck disable=SC2206
        dirs=(${CUDA_TOOLKIT_LIB_DIRS-/usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64})
        fl_read_python_dirs
        while IFS= read -r d; do
            [ -n "$d" ] && dirs+=("$d")
        done <<<"$FL_PYDIRS"
        hit=""
        for d in "${dirs[@]}"; do
            case $d in */stubs | */stubs/*) continue ;; esac
            if [ -e "$d/$lib" ]; then
                hit=$d
                break
            fi
        done
        if [ -n "$hit" ]; then
            fl_add "$hit"
            echo "$lib: added $hit to LD_LIBRARY_PATH"
        else
            echo "$lib: NOT FOUND (ldconfig, LD_LIBRARY_PATH, ${dirs[*]:-no toolkit or Python folders}): CUDA runs will fail"
        fi
    done
}

# The file the loader opens for the first of the names $2... it finds (LD_LIBRARY_PATH, then
# ldconfig's cache), as "<label>: <path> -> <resolved> (asked as <name>)".
fl_show() {
    local label=$1 name hit real
    shift
    for name in "$@"; do
        if hit=$(fl_on_path "$name"); then
            hit=$hit/$name
        elif ! hit=$(fl_in_ldcache "$name"); then
            continue
        fi
        real=$(readlink -f "$hit" 2>/dev/null || printf '%s' "$hit")
        echo "$label: $hit -> $real (asked as $name)"
        case $real in */stubs/*) echo "WARNING: $label is the toolkit's STUB: every CUDA call fails" ;; esac
        case $label in
            libcuda) ;;
            *) case ${real##*/} in *.so.13*) ;; *) echo "WARNING: $label is not CUDA 13 (cudarc is built for CUDA 13.0)" ;; esac ;;
        esac
        return 0
    done
    echo "$label: not found (asked for $*)"
}

# The names cudarc asks for, in its order (Linux ones): lib$1.so, then .so.13, .12, ... .1.
fl_names() {
    printf '%s\n' "$1.so" "$1.so.13" "$1.so.12" "$1.so.11" "$1.so.10" "$1.so.9" "$1.so.1"
}

# Which libcuda, libnvrtc and libcublas a CUDA run will load.
report_cuda_libs() {
    # shellcheck disable=SC2046
    fl_show libcuda $(fl_names libcuda)
    # shellcheck disable=SC2046
    fl_show libnvrtc $(fl_names libnvrtc)
    # shellcheck disable=SC2046
    fl_show libcublas $(fl_names libcublas)
    fl_show libcublasLt libcublasLt.so.13
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    setup_cuda_libs
    report_cuda_libs
fi
