# Sourced by packaging/e2e and packaging/e2e-cluster (after lib.sh): machines booted with
# systemd-nspawn --boot --volatile=overlay on a cached root (never changed: writes go to a
# tmpfs, gone at power-off), each on a private bridge made here, and the commands that run
# inside them. Defines names only; runs nothing.
#
# The caller defines `fail MESSAGE` (prints and exits) and sets MACHINES_RUN, a directory
# of its own for the consoles' logs. MACHINES_KEEP=1 (LABMQ_E2E_KEEP) makes
# machines_teardown leave everything up when it is called with `failed`.
#
# Names cannot collide with another run's (another clone's e2e, e2e-cluster's labmq-e2e0,
# the systems of one `packaging/e2e all` run in parallel): a bridge is lqeN, N the first
# free, taken under a lock with its 10.231.Y.0/24; a machine's nspawn name is BRIDGE-mK
# (the host side of its veth is vb-BRIDGE-mK, at most 15 characters), its hostname the
# role the caller gives it.

declare -A MACHINE_PID=() MACHINE_LEADER=() MACHINE_NAME=() MACHINE_BRIDGE=() MACHINE_CGROUPS=()
MACHINE_BRIDGES=() # the bridges this process made, removed by machines_teardown
NET_BRIDGE=
NET_SUBNET=

# Makes a bridge with a free name and a free 10.231.Y.0/24, the host being 10.231.Y.1 on
# it; sets NET_BRIDGE and NET_SUBNET (10.231.Y). Nothing routes it anywhere: the machines
# get an address on it and no default route, so they reach the host and each other only.
net_make() {
  local lock=/run/lock/labmq-e2e-net.lock fd n y
  mkdir -p /run/lock
  exec {fd}>"$lock"
  flock "$fd"
  NET_BRIDGE=
  NET_SUBNET=
  for n in $(seq 1 99); do
    ip link show "lqe$n" >/dev/null 2>&1 || { NET_BRIDGE=lqe$n; break; }
  done
  for y in $(seq 31 250); do
    # Free: no address of the host and no route (other than the default) covers it.
    if ! ip -o -4 addr show | grep -q " 10\.231\.$y\." &&
      [ -z "$(ip -o -4 route show match "10.231.$y.1" | grep -v '^default')" ]; then
      NET_SUBNET=10.231.$y
      break
    fi
  done
  if [ -z "$NET_BRIDGE" ] || [ -z "$NET_SUBNET" ]; then
    exec {fd}>&-
    fail "no free bridge name lqeN or 10.231.Y.0/24 on this host"
  fi
  ip link add "$NET_BRIDGE" type bridge &&
    ip addr add "$NET_SUBNET.1/24" dev "$NET_BRIDGE" &&
    ip link set "$NET_BRIDGE" up || { exec {fd}>&-; fail "ip link add $NET_BRIDGE type bridge"; }
  MACHINE_BRIDGES+=("$NET_BRIDGE")
  exec {fd}>&-
}

# machine_boot M ROOT BRIDGE [NSPAWN_ARGS...]: boots machine M (hostname M) on ROOT and
# BRIDGE, in the background; machine_await waits for it.
machine_boot() {
  local m=$1 root=$2 bridge=$3
  shift 3
  if [ -z "${MACHINE_NAME[$m]:-}" ] || [ "${MACHINE_BRIDGE[$m]}" != "$bridge" ]; then
    MACHINE_NAME[$m]=$bridge-m$((${#MACHINE_NAME[@]} + 1))
    MACHINE_BRIDGE[$m]=$bridge
  fi
  # systemd 258 and newer (Ubuntu 26.04's) refuse to boot on the legacy cgroup hierarchy,
  # which nspawn gives a machine on a host with the hybrid layout (this Debian 12 host):
  # theirs get the unified one. Older ones keep nspawn's choice (under the forced
  # unified hierarchy, systemd 245 and 255 answer `systemctl kill` with EIO).
  local nspawn_env=() systemd
  systemd=$(sed -n '/^Package: systemd$/,/^$/s/^Version: \([0-9]*\).*/\1/p' "$root/var/lib/dpkg/status")
  [ "${systemd:-0}" -lt 258 ] || nspawn_env=(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1)
  # A cgroup of the machine's own. With --keep-unit nspawn puts the machine in its own
  # cgroup (its "payload" subgroup): machines started from one shell would share one, and
  # the systemd of each would manage the others' units (a SIGKILL of one machine's
  # labmq-consumer.service killing another's). On a host booted with systemd, a scope with
  # delegation; on one without (this one, CI's), a directory in each hierarchy nspawn uses.
  local launcher=() dirs=() d
  if [ -d /run/systemd/system ]; then
    launcher=(systemd-run --quiet --scope -p Delegate=yes --unit="${MACHINE_NAME[$m]}-$$.scope")
  else
    for d in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
      [ -e "$d/cgroup.procs" ] || continue
      [ "$d" != /sys/fs/cgroup ] || [ ${#dirs[@]} -eq 0 ] || continue
      mkdir -p "$d/labmq-e2e/${MACHINE_NAME[$m]}"
      dirs+=("$d/labmq-e2e/${MACHINE_NAME[$m]}")
    done
  fi
  MACHINE_CGROUPS[$m]="${dirs[*]}"
  setsid sh -c 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ >"$1/cgroup.procs"; shift; n=$((n - 1)); done; exec "$@"' \
    sh "${#dirs[@]}" "${dirs[@]}" "${launcher[@]}" env "${nspawn_env[@]}" \
    systemd-nspawn --quiet --boot --volatile=overlay --register=no --keep-unit \
    --machine="${MACHINE_NAME[$m]}" --hostname="$m" --timezone=off --resolv-conf=off \
    --network-bridge="$bridge" "$@" -D "$root" \
    </dev/null >"$MACHINES_RUN/console-$m.log" 2>&1 &
  MACHINE_PID[$m]=$!
  MACHINE_LEADER[$m]=
}
# Removes machine M's cgroups (innermost first) once it is down.
machine_cgroups_rm() {
  local d
  for d in ${MACHINE_CGROUPS[$1]:-}; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  MACHINE_CGROUPS[$1]=
}

# machine_await M ADDR: waits until machine M's systemd has finished booting (running or
# degraded), after giving it ADDR/24 on its host0 (with the host's ip: a minbase root has
# none). Prints nothing; machine_describe says what booted.
machine_await() {
  local m=$1 addr=$2 pid=${MACHINE_PID[$1]} leader= state=
  for _ in $(seq 120); do
    leader=$(ps -o pid= --ppid "$pid" 2>/dev/null | head -1 | tr -d ' ' || true)
    [ -n "$leader" ] && [ "$(cat /proc/"$leader"/comm 2>/dev/null)" = systemd ] && break
    leader=
    kill -0 "$pid" 2>/dev/null || { cat "$MACHINES_RUN/console-$m.log" >&2; fail "systemd-nspawn of $m exited"; }
    sleep 0.5
  done
  [ -n "$leader" ] || { cat "$MACHINES_RUN/console-$m.log" >&2; fail "no systemd inside $m"; }
  MACHINE_LEADER[$m]=$leader
  nsenter -t "$leader" -n ip link set lo up
  nsenter -t "$leader" -n ip addr add "$addr/24" dev host0
  nsenter -t "$leader" -n ip link set host0 up
  for _ in $(seq 240); do
    state=$(machine_exec "$m" systemctl is-system-running 2>/dev/null || true)
    case $state in running | degraded) break ;; esac
    sleep 0.5
  done
  case $state in
    running | degraded) ;;
    *) fail "$m did not finish booting in 120 s (state: $state; jobs: $(machine_exec "$m" systemctl list-jobs --no-legend 2>/dev/null | awk '{print $2}' | tr '\n' ' '))" ;;
  esac
}

# One line on what machine M runs: OS, systemd, boot state, failed units (not ours).
machine_describe() {
  local m=$1 state
  state=$(machine_exec "$m" systemctl is-system-running 2>/dev/null || true)
  printf '%s, %s, state %s, pid 1 is host pid %s' \
    "$(machine_exec "$m" sh -c '. /etc/os-release; echo "$PRETTY_NAME"')" \
    "$(machine_exec "$m" systemctl --version | head -1 | cut -d' ' -f1-2)" "$state" "${MACHINE_LEADER[$m]}"
  [ "$state" != degraded ] ||
    printf ' (failed units: %s)' "$(machine_exec "$m" systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
}

# Runs a command inside machine M, in a clean environment.
machine_exec() {
  local m=$1
  shift
  nsenter -t "${MACHINE_LEADER[$m]}" -m -u -i -n -p -- /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
    DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
# Runs a host command (curl) in machine M's network: its loopback, its own ports.
machine_net() {
  local m=$1
  shift
  nsenter -t "${MACHINE_LEADER[$m]}" -n -- "$@"
}
# machine_wait M SECS CONDITION: polls a shell condition inside M for up to SECS seconds.
machine_wait() {
  local m=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 2))); do
    machine_exec "$m" sh -c "$*" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

# The last N lines of the journal of the labmq units of every machine still up, for a
# failure's message.
machines_journals() {
  local lines=$1 m
  for m in "${!MACHINE_LEADER[@]}"; do
    [ -n "${MACHINE_LEADER[$m]}" ] || continue
    echo "---- $m: journal of labmq units (last $lines lines)" >&2
    machine_exec "$m" journalctl --no-pager -n "$lines" -u 'labmq-*' >&2 2>/dev/null || true
  done
}

# Powers machine M off: SIGTERM asks its systemd to, SIGKILL if it takes over 30 s.
machine_stop() {
  local m=$1 pid=${MACHINE_PID[$1]:-}
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  MACHINE_PID[$m]=
  MACHINE_LEADER[$m]=
  machine_cgroups_rm "$m"
}
# After `systemctl poweroff` inside M: waits for its nspawn to exit.
machine_gone() {
  wait "${MACHINE_PID[$1]}" 2>/dev/null || true
  MACHINE_PID[$1]=
  MACHINE_LEADER[$1]=
  machine_cgroups_rm "$1"
}

# machines_teardown [failed]: every machine powered off (in parallel), every bridge of
# this process removed; with `failed` and MACHINES_KEEP=1, all left up and said how to
# enter and clean up. Returns 1 when kept.
machines_teardown() {
  local m pids=()
  if [ "${MACHINES_KEEP:-0}" = 1 ] && [ "${1:-}" = failed ]; then
    for m in "${!MACHINE_PID[@]}"; do
      [ -z "${MACHINE_PID[$m]}" ] ||
        echo "kept running: $m: nsenter -t ${MACHINE_LEADER[$m]:-?} -m -u -i -n -p; stop with kill ${MACHINE_PID[$m]}" >&2
    done
    [ ${#MACHINE_BRIDGES[@]} -eq 0 ] || echo "kept: bridge(s) ${MACHINE_BRIDGES[*]}: ip link del NAME" >&2
    return 1
  fi
  for m in "${!MACHINE_PID[@]}"; do
    [ -n "${MACHINE_PID[$m]}" ] || continue
    machine_stop "$m" &
    pids+=($!)
  done
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}" 2>/dev/null || true
  for m in "${!MACHINE_PID[@]}"; do
    [ -z "${MACHINE_PID[$m]}" ] || kill -KILL "${MACHINE_PID[$m]}" 2>/dev/null || true
    MACHINE_PID[$m]=
    MACHINE_LEADER[$m]=
    machine_cgroups_rm "$m"
  done
  for m in "${MACHINE_BRIDGES[@]}"; do ip link del "$m" 2>/dev/null || true; done
  MACHINE_BRIDGES=()
}
