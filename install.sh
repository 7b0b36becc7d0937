#!/bin/sh
# Installs podspawn.
#
#   curl -sSf https://github.com/podspawn/podspawn/releases/latest/download/install.sh | sh
#   sh install.sh --from-source          # build this checkout with cargo, then install
#
# As root it installs /usr/local/bin/podspawn owned root:docker, mode 2755: setgid
# docker, so podspawn's users never need to be in the docker group. Without root it
# installs ~/.local/bin/podspawn, mode 0755 and nothing setgid: a laptop's, for
# `podspawn setup` and `ssh USER@NAME.pod`.
#
# Environment:
#   PODSPAWN_INSTALL_URL  where releases are: an http(s) URL or a local directory
#                         (default: the project's GitHub releases)
#   PODSPAWN_INSTALL_DIR  where to install (default: see above)
#   PODSPAWN_SOURCE       the source tree for --from-source (default: this script's)
#   PODSPAWN_BINARY       install this already built binary instead
set -eu

BASE_URL=${PODSPAWN_INSTALL_URL:-https://github.com/podspawn/podspawn/releases/latest/download}

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

from_source=0
for arg in "$@"; do
    case $arg in
        --from-source) from_source=1 ;;
        -h|--help)
            say "usage: install.sh [--from-source]   (see the comment at the top of install.sh)"
            exit 0 ;;
        *) die "unknown option '$arg'; see install.sh --help" ;;
    esac
done

case $(uname -s) in
    Linux) os=linux ;;
    *) die "podspawn runs on Linux; this is $(uname -s)" ;;
esac
case $(uname -m) in
    x86_64|amd64) arch=x86_64 ;;
    aarch64|arm64) arch=aarch64 ;;
    *) die "there is no podspawn build for $(uname -m)" ;;
esac
say "Detected: $os/$arch"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# Copies URL (http(s), file://, or a local path) to FILE; fails on any HTTP error.
fetch() {
    case $1 in
        http://*|https://*)
            if command -v curl >/dev/null 2>&1; then
                curl -fsSL --proto '=https,http' --max-time 300 -o "$2" "$1" 2>/dev/null
            elif command -v wget >/dev/null 2>&1; then
                wget -q -O "$2" "$1"
            else
                die "needs curl or wget to download $1"
            fi ;;
        file://*) cp "${1#file://}" "$2" 2>/dev/null ;;
        *) cp "$1" "$2" 2>/dev/null ;;
    esac
}

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        die "needs sha256sum or shasum to verify the download"
    fi
}

if [ -n "${PODSPAWN_BINARY:-}" ]; then
    binary=$PODSPAWN_BINARY
    [ -x "$binary" ] || die "PODSPAWN_BINARY=$binary is not an executable file"
elif [ "$from_source" = 1 ]; then
    source_dir=${PODSPAWN_SOURCE:-$(cd "$(dirname "$0")" && pwd)}
    [ -f "$source_dir/Cargo.toml" ] && [ -x "$source_dir/contrib/build-release" ] \
        || die "--from-source needs a podspawn source tree: run it from one, or set PODSPAWN_SOURCE"
    command -v cargo >/dev/null 2>&1 \
        || die "--from-source needs cargo on PATH (https://rustup.rs; under sudo, keep your PATH)"
    say "Building podspawn from $source_dir..."
    binary=$("$source_dir/contrib/build-release" | tail -n 1)
else
    tarball="podspawn-$os-$arch.tar.gz"
    say "Downloading $tarball from $BASE_URL..."
    fetch "$BASE_URL/$tarball" "$work/$tarball" \
        || die "there is no podspawn release for $os/$arch at $BASE_URL/$tarball"
    fetch "$BASE_URL/$tarball.sha256" "$work/$tarball.sha256" \
        || die "cannot get the checksum $BASE_URL/$tarball.sha256; not installing"
    expected=$(cut -d' ' -f1 < "$work/$tarball.sha256")
    actual=$(sha256 "$work/$tarball")
    [ -n "$expected" ] && [ "$expected" = "$actual" ] \
        || die "checksum mismatch for $tarball (expected ${expected:-nothing}, got $actual); not installing"
    tar -xzf "$work/$tarball" -C "$work" podspawn \
        || die "$tarball does not hold a podspawn binary"
    binary=$work/podspawn
fi

if [ "$(id -u)" = 0 ]; then
    dir=${PODSPAWN_INSTALL_DIR:-/usr/local/bin}
    mkdir -p "$dir"
    if grep -q '^docker:' /etc/group; then
        owner=root:docker mode=2755
    else
        owner=root:root mode=0755
        say "warning: there is no docker group yet; installing without setgid."
        say "         After installing Docker: chown root:docker $dir/podspawn && chmod 2755 $dir/podspawn"
    fi
else
    dir=${PODSPAWN_INSTALL_DIR:-$HOME/.local/bin}
    mkdir -p "$dir"
    owner= mode=0755
fi
say "Installing to $dir/podspawn"
# Next to it first, then one rename: a running sshd never sees half a binary.
cp "$binary" "$dir/.podspawn.new"
[ -z "$owner" ] || chown "$owner" "$dir/.podspawn.new"
chmod "$mode" "$dir/.podspawn.new"
mv -f "$dir/.podspawn.new" "$dir/podspawn"
"$dir/podspawn" version
if [ -z "$owner" ]; then
    case ":$PATH:" in
        *":$dir:"*) ;;
        *) say "note: $dir is not on your PATH; add it (in ~/.profile, say)" ;;
    esac
    say "On a laptop, next: $dir/podspawn setup   (then ssh USER@NAME.pod)"
fi
say "Done."
