# Sourced by the scripts that need Debian packages: apt_install installs
# them when the script runs as root on a machine with apt, and otherwise
# says what to install. Returns non-zero when the packages are still missing.

apt_updated=0

apt_install() { # package...
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install $* (Debian: apt-get install $*), then run this again" >&2
    return 1
  fi
  if ((apt_updated == 0)); then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    apt_updated=1
  fi
  echo "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
