# Sourced by sample-jobs/build.sh and tests/run.sh: `apt_install PACKAGE…` installs Debian
# packages (running `apt-get update` once first, with sudo when not root).
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "$@"
}
