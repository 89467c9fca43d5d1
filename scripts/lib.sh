# Shared helpers for Anneal's scripts: progress lines and installing what is missing.
# shellcheck shell=bash

# A progress line: "==> what is happening".
step() { printf '\n==> %s\n' "$*" >&2; }
# A detail line under a step.
note() { printf '    %s\n' "$*" >&2; }

_apt_updated=""
# Install Debian packages that are not installed yet (needs root, as on CI and dev machines).
need_pkgs() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ -z "$_apt_updated" ]; then
    note "apt-get update"
    $sudo apt-get update -qq >/dev/null
    _apt_updated=1
  fi
  note "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Make sure cargo, rustfmt and clippy exist: rustup's if present, else Debian's Rust packages.
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    step "Installing Rust from Debian's packages (rustc-web, cargo-web)"
    need_pkgs rustc-web cargo-web rustfmt-web rust-web-clippy gcc libc6-dev pkg-config
  fi
  note "$(cargo --version)"
}
