# Sourced by packaging/e2e (after lib.sh): the systems it boots, as rows of one table, and
# their cached roots. Defines names only; runs nothing.

# One row per system: name, what it is, archive, the debootstrap script ("-": this host's
# debootstrap has one for the name, and the archive is its default), and the upstream
# version of the rabbitmq-server package of the archive's main component (release
# pocket: what the root gets), which the root's making checks. This host's debootstrap
# (1.0.128) has no script for noble and resolute: gutsy's serves every Ubuntu since 7.10.
E2E_SYSTEMS='
focal     Ubuntu-20.04  http://archive.ubuntu.com/ubuntu  -                                   3.8.2
jammy     Ubuntu-22.04  http://archive.ubuntu.com/ubuntu  -                                   3.9.13
noble     Ubuntu-24.04  http://archive.ubuntu.com/ubuntu  /usr/share/debootstrap/scripts/gutsy  3.12.1
resolute  Ubuntu-26.04  http://archive.ubuntu.com/ubuntu  /usr/share/debootstrap/scripts/gutsy  4.0.5
bookworm  Debian-12     http://deb.debian.org/debian      -                                   3.10.8
trixie    Debian-13     http://deb.debian.org/debian      -                                   4.0.5
'
# What `all` runs (tests/run): the floor, the newest Ubuntu LTS that has been out a while,
# the newest Debian; `matrix` is every row.
E2E_ALL="focal noble trixie"
E2E_MATRIX=$(awk 'NF { printf "%s ", $1 }' <<<"$E2E_SYSTEMS")
E2E_MATRIX=${E2E_MATRIX% }
INCLUDE=systemd,dbus,systemd-sysv,adduser,procps

# system_field SYSTEM COLUMN (1 name, 2 what, 3 archive, 4 script, 5 RabbitMQ).
system_field() {
  awk -v s="$1" -v c="$2" '$1 == s { print $c; found = 1 } END { exit !found }' <<<"$E2E_SYSTEMS"
}
is_system() { system_field "$1" 1 >/dev/null; }
system_what() { system_field "$1" 2 | tr - ' '; }

# The plain debootstrap root of SYSTEM, $CACHE/SYSTEM (tests/rabbitmq4 copies trixie's;
# e2e-cluster boots focal's). Only a row with a script passes archive and script, so the
# roots made before the table (focal, trixie) keep their stamps and are reused. Prints
# its path.
make_base_root() {
  local system=$1 archive script after=()
  archive=$(system_field "$system" 3)
  script=$(system_field "$system" 4)
  [ "$script" = - ] || after=(-- "$archive" "$script")
  with_lock "$CACHE/$system.lock" cached_debootstrap "$CACHE/$system" \
    --variant=minbase --include="$INCLUDE" "$system" "${after[@]}" || return 1
  echo "$CACHE/$system"
}

# The root SYSTEM's machines boot: a copy of the plain root with the system's own
# rabbitmq-server installed by apt in a chroot, $CACHE/SYSTEM-rabbitmq, made again when
# the plain root or this recipe changes (its stamp records both, beside it). The machines
# have no route to a mirror, so whatever they run must be in the root. Prints its path.
ROOT_RECIPE="apt-get install rabbitmq-server; rabbitmq-env.conf NODENAME=rabbit@localhost, schedulers without busy wait (v1)"
make_root() {
  local system=$1 base root marker started=$SECONDS version want
  base=$(make_base_root "$system") || { echo "debootstrap $system failed (see $CACHE/$system.debootstrap.log)" >&2; return 1; }
  root=$CACHE/$system-rabbitmq
  marker="$(cat "$base.stamp") + $ROOT_RECIPE"
  mkdir -p "$CACHE"
  exec {lockfd}>"$root.lock"
  flock "$lockfd"
  if [ -d "$root" ] && [ -f "$root.stamp" ] && [ "$(cat "$root.stamp")" = "$marker" ]; then
    exec {lockfd}>&-
    echo "reusing $root" >&2
    echo "$root"
    return 0
  fi
  rm -rf "$root" "$root.partial" "$root.stamp"
  echo "making $root: $base + rabbitmq-server (once per machine; log $root.log)" >&2
  cp -a "$base" "$root.partial"
  # Nothing starts inside the root while packages install (there is no init there); the
  # file goes once they are in, so that the booted machine starts what it has enabled.
  printf '#!/bin/sh\nexit 101\n' >"$root.partial/usr/sbin/policy-rc.d"
  chmod 755 "$root.partial/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root.partial/etc/resolv.conf"
  # A mirror's copy may outlive the Valid-Until of its Release file (Debian testing's).
  if ! chroot "$root.partial" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -q -o Acquire::Check-Valid-Until=false &&
     apt-get install -y -q --no-install-recommends rabbitmq-server && apt-get clean' >"$root.log" 2>&1; then
    tail -20 "$root.log" >&2
    exec {lockfd}>&-
    echo "installing rabbitmq-server into $root.partial failed (log $root.log)" >&2
    return 1
  fi
  rm -f "$root.partial/usr/sbin/policy-rc.d"
  # The node is rabbit@localhost (as on this host), whatever the machine's hostname; its
  # Erlang schedulers do not spin while idle: several machines share two cores.
  cat >>"$root.partial/etc/rabbitmq/rabbitmq-env.conf" <<'EOF'

# packaging/e2e: a node name that needs no DNS; no busy-waiting schedulers (machines share the CPU).
NODENAME=rabbit@localhost
SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"
EOF
  [ -s "$root.partial/etc/hosts" ] ||
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root.partial/etc/hosts"
  compgen -G "$root.partial/etc/systemd/system/*.wants/rabbitmq-server.service" >/dev/null || {
    exec {lockfd}>&-
    echo "rabbitmq-server.service is not enabled in $root.partial" >&2
    return 1
  }
  version=$(chroot "$root.partial" dpkg-query -W -f '${Version}' rabbitmq-server)
  want=$(system_field "$system" 5)
  # The upstream part: a point release may change the Debian revision, not what it runs.
  if [ "$(upstream_version "$version")" != "$want" ]; then
    exec {lockfd}>&-
    echo "$system's archive has rabbitmq-server $version; the table in packaging/e2e-systems.sh says $want: correct the table" >&2
    return 1
  fi
  mv "$root.partial" "$root"
  echo "$marker" >"$root.stamp"
  exec {lockfd}>&-
  echo "made $root: rabbitmq-server $version in $((SECONDS - started)) s" >&2
  echo "$root"
}
# 3.8.2-0ubuntu1 -> 3.8.2; 4.0.5-7 -> 4.0.5; 3.12.1-1ubuntu1 -> 3.12.1
upstream_version() { local v=${1#*:}; echo "${v%%-*}"; }

# with_lock FILE CMD...: CMD under an exclusive lock of FILE (two runs making one root).
with_lock() {
  local file=$1 fd rc=0
  shift
  # The cache directory may not exist yet on a new machine.
  mkdir -p "$(dirname "$file")"
  exec {fd}>"$file"
  flock "$fd"
  "$@" || rc=$?
  exec {fd}>&-
  return $rc
}
