# One set-up command (README, "Install"). Source it, so that the environment it makes stays active:
#
#     source scripts/setup_env.sh [--cpu | --cuda [TAG]] [--venv DIR | --no-venv] [--latest] [--dry-run]
#
# (or run it with bash and then `source .venv/bin/activate`).
#
# Where it installs: the virtual environment (or conda environment) that is active; else the venv DIR
# (default: .venv in the repository, made when missing with $PYTHON, default python3); with --no-venv,
# the current `python` itself (containers; a PEP 668 system Python refuses this, use a venv).
# Which torch wheel: by default PyPI's (on Linux x86_64 a CUDA build, elsewhere the CPU build); --cpu takes
# the CPU-only wheel and --cuda TAG (default cu128) a CUDA wheel from PyTorch's own index, or any index
# given in TORCH_INDEX_URL.
# Which versions: exactly those of constraints.txt, the set the test suite last passed with (README,
# "Tested versions"); --latest resolves the newest that setup.py's ranges allow instead (to refresh the
# lock: then run the tests and `python -m pip freeze --exclude-editable > constraints.txt`).
# torch is installed first: basicsr 1.4.2's setup.py imports torch while it builds, so the project is
# installed without build isolation after it.

_ssr_setup_main() {
    local root python venv=".venv" use_venv=1 torch_index="${TORCH_INDEX_URL:-}" latest=0 dry=0
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    python="${PYTHON:-python3}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --cpu) torch_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;;
            --cuda)
                local tag=cu128
                if [ $# -gt 1 ] && [[ "$2" == cu* ]]; then tag="$2"; shift; fi
                torch_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$tag}" ;;
            --venv)
                if [ $# -lt 2 ]; then echo "setup_env.sh: --venv needs a folder" >&2; return 2; fi
                venv="$2"; shift ;;
            --no-venv) use_venv=0 ;;
            --latest) latest=1 ;;
            --dry-run) dry=1 ;;
            -h|--help) sed -n "1,18p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
            *) echo "setup_env.sh: unknown argument '$1' (see --help)" >&2; return 2 ;;
        esac
        shift
    done
    case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac

    local target=""
    if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
        python=python  # the active environment's
        target="the active environment (${VIRTUAL_ENV:-$CONDA_PREFIX})"
        use_venv=0
    elif [ "$use_venv" = 1 ]; then
        target="the venv $venv"
    else
        python=python
        target="the current Python ($(command -v python))"
    fi

    local constraints=(-c "$root/constraints.txt") index_args=()
    [ "$latest" = 1 ] && constraints=()
    [ -n "$torch_index" ] && index_args=(--index-url "$torch_index")
    local torch_spec=(torch torchvision)
    if [ "$latest" = 0 ]; then  # the pair of the lock file, and nothing else from a foreign index
        torch_spec=("$(grep -i '^torch==' "$root/constraints.txt")" "$(grep -i '^torchvision==' "$root/constraints.txt")")
    fi

    echo "setup_env.sh: installing into $target; torch from ${torch_index:-PyPI}; versions: $([ "$latest" = 1 ] && echo "newest within setup.py's ranges" || echo constraints.txt)"
    if [ "$dry" = 1 ]; then
        [ "$use_venv" = 1 ] && [ ! -x "$venv/bin/python" ] && echo "+ $python -m venv $venv"
        [ "$use_venv" = 1 ] && python="$venv/bin/python"
        echo "+" "$python" -m pip install ${constraints[@]+"${constraints[@]}"} ${index_args[@]+"${index_args[@]}"} "${torch_spec[@]}"
        echo "+" "$python" -m pip install ${constraints[@]+"${constraints[@]}"} --no-build-isolation -e "$root[depth,test]"
        return 0
    fi
    if [ "$use_venv" = 1 ]; then
        if [ ! -x "$venv/bin/python" ]; then
            "$python" -m venv "$venv" || { echo "setup_env.sh: could not make the venv $venv with $python" >&2; return 1; }
        fi
        python="$venv/bin/python"
    fi
    (
        set -euo pipefail
        cd "$root"
        # ${a[@]+"${a[@]}"}: an empty array under set -u (bash < 4.4, macOS' bash 3.2)
        "$python" -m pip install ${constraints[@]+"${constraints[@]}"} ${index_args[@]+"${index_args[@]}"} "${torch_spec[@]}"
        "$python" -m pip install ${constraints[@]+"${constraints[@]}"} --no-build-isolation -e ".[depth,test]"
        "$python" -m ssr_utils.environment
    ) || { echo "setup_env.sh: the installation failed (see above)" >&2; return 1; }
    if [ "$use_venv" = 1 ]; then
        if [ "${BASH_SOURCE[0]}" != "$0" ]; then
            # shellcheck disable=SC1091
            source "$venv/bin/activate"
            echo "setup_env.sh: $venv is active in this shell"
        else
            echo "setup_env.sh: done; activate it with: source ${venv#"$PWD"/}/bin/activate"
        fi
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _ssr_setup_main "$@"
    exit $?
fi
_ssr_setup_main "$@"
_ssr_setup_status=$?
unset -f _ssr_setup_main
return $_ssr_setup_status
