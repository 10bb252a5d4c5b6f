# Sourced by the packaging scripts (after `cd` to the checkout): what more than one of
# them must agree on, written once. Defines names only; runs nothing.

# Where packaging/build-debs puts each architecture's packages (relative to the
# checkout), and the Rust target it builds them for. amd64 keeps the directory it always
# had.
declare -A LABMQ_DEB_DIR=([amd64]=target/debian [arm64]=target/debian-arm64)
declare -A LABMQ_TRIPLE=([amd64]=x86_64-unknown-linux-gnu [arm64]=aarch64-unknown-linux-gnu)

# A TCP port on ADDRESS (default 127.0.0.1) that the kernel reports free (free when
# printed; the caller binds it soon after).
free_port() {
  python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"
}

# A root made once by `debootstrap --no-check-gpg ARGS... DIR [MIRROR [SCRIPT]]` and kept:
# `cached_debootstrap DIR ARGS... [-- MIRROR [SCRIPT]]`, ARGS ending with the suite; what
# follows `--` goes after DIR (a suite this host's debootstrap has no script for names
# the script of a kin, e.g. /usr/share/debootstrap/scripts/sid for forky). DIR is made
# again when it is missing or was made with other arguments, which DIR.stamp records
# beside it (not in it: e2e's purge check looks for any 'labmq' file inside). The log is
# DIR.debootstrap.log; on failure its tail goes to stderr and the status is 1. Says on
# stderr which of the two it did.
cached_debootstrap() {
  local dir=$1
  shift
  local before=() after=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do before+=("$1"); shift; done
  [ $# -eq 0 ] || { shift; after=("$@"); }
  set -- "${before[@]}"
  local marker="debootstrap $*${after[*]:+ -- ${after[*]}}" stamp=$dir.stamp log=$dir.debootstrap.log
  if [ -d "$dir" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$marker" ]; then
    echo "reusing $dir ($(du -sh "$dir" | cut -f1))" >&2
    return 0
  fi
  rm -rf "$dir" "$dir.partial" "$stamp"
  mkdir -p "$(dirname "$dir")"
  echo "$marker into $dir (once per machine; a few minutes)" >&2
  if ! debootstrap --no-check-gpg "$@" "$dir.partial" "${after[@]}" >"$log" 2>&1; then
    tail -5 "$log" >&2
    return 1
  fi
  mv "$dir.partial" "$dir"
  echo "$marker" >"$stamp"
}
