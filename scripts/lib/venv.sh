# Sourced by scripts/demo and scripts/test: make the project's virtual environment (.venv) and
# install tether into it with the extras named in $1.
#
# Why a project venv: a fresh Debian or Ubuntu refuses `pip install` into its own python3
# (PEP 668, externally-managed-environment), and neither pipx nor uv comes with it. A venv needs
# only python3-venv, which this script installs with apt-get where it is missing and it may (root,
# or sudo without a password), so both quick-start commands run unattended on a fresh machine.

tether_apt_install() {
  local sudo_=""
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then sudo_="sudo -n"; else
      echo "tether: missing system packages: $*; install them with: sudo apt-get install -y $*" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "tether: missing system packages: $* (no apt-get here: install them with your package manager)" >&2
    return 1
  fi
  echo "installing system packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get update -qq </dev/null
  $sudo_ apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

tether_venv() {
  local extras="$1" py="${PYTHON:-python3}"
  if ! command -v "$py" >/dev/null 2>&1; then
    tether_apt_install python3 python3-venv || return 1
  fi
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "tether: needs Python >= 3.10; $("$py" -V 2>&1) found (set PYTHON=/path/to/python3.X)" >&2
    return 1
  fi
  # A venv left by another interpreter, or half made, is made again.
  if [ -d .venv ] && ! .venv/bin/python -c 'import pip' >/dev/null 2>&1; then
    rm -rf .venv
  fi
  if [ ! -d .venv ]; then
    if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      local ver
      ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      tether_apt_install python3-venv "python${ver}-venv" || return 1
    fi
    "$py" -m venv .venv || { rm -rf .venv; return 1; }
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]" </dev/null
}
