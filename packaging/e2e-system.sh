# Sourced by packaging/e2e: the test of one system, up to the server checks; the upgrade,
# consumer and web steps are in e2e-upgrade.sh and e2e-consumer.sh. Defines names only.


# capture FILE CMD...: runs CMD inside and writes "$ CMD" and its output (stdout and
# stderr) to $LABMQ_CAPTURE_DIR/$SYSTEM/FILE, for the README's captures.
capture() {
  local file=$1
  shift
  mkdir -p "$LABMQ_CAPTURE_DIR/$SYSTEM"
  { printf '$ %s\n' "$*" | sed 's#LABMQ_AMQP_URL=[^ ]* ##; s#--queue [^ ]* ##'; inside "$@" 2>&1 || true; } \
    >"$LABMQ_CAPTURE_DIR/$SYSTEM/$file"
}


# The APT repository of one system: a tree that packaging/build-repo runs in (copies of it
# and lib.sh, the copyright file of the keyring package, target/debian with the packages to
# publish), a signing key of this run's own, and python3's http.server bound to the host's
# address on the system's bridge (NET_SUBNET.1), the one address the machine reaches,
# serving it until the system's test ends.
REPO_TREE=
REPO_PID=
REPO_URL=
repo_start() {
  local addr=$NET_SUBNET.1 port
  REPO_TREE=$(mktemp -d)
  mkdir -p "$REPO_TREE/packaging/debian" "$REPO_TREE/target"
  cp packaging/build-repo packaging/lib.sh "$REPO_TREE/packaging/"
  cp packaging/debian/copyright "$REPO_TREE/packaging/debian/"
  port=$(free_port "$addr")
  python3 -m http.server --bind "$addr" --directory "$REPO_TREE/target" "$port" >"$REPO_TREE/http.log" 2>&1 &
  REPO_PID=$!
  REPO_URL=http://$addr:$port/apt/
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null && return 0; sleep 0.1; done
  fail "python3 -m http.server did not listen on $addr:$port"
}
repo_stop() {
  [ -z "$REPO_PID" ] || { kill "$REPO_PID" 2>/dev/null || true; wait "$REPO_PID" 2>/dev/null || true; }
  REPO_PID=
  [ -z "$REPO_TREE" ] || rm -rf "$REPO_TREE"
  REPO_TREE=
}
# repo_publish [--clean] DEB...: adds the packages to the repository (earlier versions stay
# in the pool, as packaging/build-repo keeps them), re-indexes and signs it.
repo_publish() {
  local clean=
  [ "$1" != --clean ] || { clean=--clean; shift; }
  local published=$REPO_TREE/${LABMQ_DEB_DIR[amd64]}
  rm -rf "$published"
  mkdir -p "$published"
  cp "$@" "$published/"
  LABMQ_APT_SIGNING_KEY=$REPO_TREE/signing-key.asc LABMQ_APT_URL=$REPO_URL \
    "$REPO_TREE/packaging/build-repo" $clean >"$REPO_TREE/build-repo.log" 2>&1 ||
    { tail -20 "$REPO_TREE/build-repo.log" >&2; fail "packaging/build-repo"; }
}
# apt-get update of the labmq source alone: the machine's own archive is left out (it has
# no route to it), and `apt-get upgrade` can only upgrade labmq.
apt_update() {
  inside apt-get update -q -o Dir::Etc::SourceList=/dev/null >"$RUN_DIR/apt-update.log" 2>&1 ||
    { cat "$RUN_DIR/apt-update.log" >&2; fail "apt-get update"; }
}

# The machine of the system under test: its role name (and hostname) is the system's.
inside() { machine_exec "$SYSTEM" "$@"; }
wait_for() { machine_wait "$SYSTEM" "$@"; }
prop() { inside systemctl show -p "$2" --value "$1"; }
# killed_and_restarted UNIT SECS: SIGKILLs the unit's main process and waits up to SECS for
# systemd to have restarted it (NRestarts grew, active again); fails otherwise.
killed_and_restarted() {
  local unit=$1 secs=$2 restarts
  restarts=$(prop "$unit" NRestarts)
  inside systemctl kill -s KILL "$unit"
  wait_for "$secs" "[ \"\$(systemctl show -p NRestarts --value $unit)\" -gt $restarts ] && systemctl is-active --quiet $unit" ||
    fail "no automatic restart of $unit after SIGKILL (state $(inside systemctl is-active "$unit" || true))"
}
# A host command (curl) in the machine's network, where its services listen on 127.0.0.1.
in_net() { machine_net "$SYSTEM" "$@"; }

RUN_DIR=
system_exit() {
  local status=$1 kept=false
  if [ "$status" != 0 ]; then
    echo "$STEP" >"$RESULTS/$SYSTEM.step"
    machines_teardown failed || kept=true
  else
    machines_teardown
  fi
  $kept && echo "[$SYSTEM] kept: the repository at $REPO_URL and $RUN_DIR; stop its server with kill $REPO_PID" >&2
  $kept || { repo_stop; [ -z "$RUN_DIR" ] || rm -rf "$RUN_DIR"; }
  rm -f "$RESULTS/$SYSTEM.pid"
}

# ---------------------------------------------------------------- the test of one system
# Runs in a subshell of its own (packaging/e2e's run_one): its traps, machine, bridge and
# repository are this system's only. Writes $RESULTS/SYSTEM.result (a row of the table)
# when every step passed, SYSTEM.steps (the duration of each step), SYSTEM.step (the step
# that failed).
run_system() {
  SYSTEM=$1
  STEP=setup
  STEPS_FILE=$RESULTS/$SYSTEM.steps
  echo "$BASHPID" >"$RESULTS/$SYSTEM.pid"
  local root system_started=$SECONDS
  trap 'status=$?; trap - ERR; system_exit $status; exit $status' EXIT
  trap 'exit 130' INT TERM
  # Any command that fails outside an explicit check still names the system and step.
  trap 'echo "[$SYSTEM] FAILED at step '"'"'$STEP'"'"': line $LINENO: $BASH_COMMAND" >&2' ERR
  RUN_DIR=$(mktemp -d /tmp/labmq-e2e-$SYSTEM.XXXXXX)
  MACHINES_RUN=$RUN_DIR
  step "root"
  root=$(make_root "$SYSTEM") || fail "no root for $SYSTEM (see $CACHE/$SYSTEM.debootstrap.log, $CACHE/$SYSTEM-rabbitmq.log)"

  step "network"
  # A bridge of the system's own: the machine runs its own RabbitMQ (5672, epmd 4369),
  # which the host's network would not let it bind, and reaches nothing but the host.
  net_make
  repo_start
  say "bridge $NET_BRIDGE ($NET_SUBNET.0/24): host $NET_SUBNET.1 serves the APT repository at $REPO_URL (pid $REPO_PID); the machine is $NET_SUBNET.2"

  step "boot"
  machine_boot "$SYSTEM" "$root" "$NET_BRIDGE"
  machine_await "$SYSTEM" "$NET_SUBNET.2"
  say "booted: $(machine_describe "$SYSTEM")"
  wait_for 60 'systemctl is-active --quiet rabbitmq-server' ||
    fail "rabbitmq-server is $(inside systemctl is-active rabbitmq-server || true) after boot: $(inside journalctl --no-pager -n 20 -u rabbitmq-server -o cat)"
  RABBITMQ_VERSION=$(inside dpkg-query -W -f '${Version}' rabbitmq-server)
  say "rabbitmq-server $RABBITMQ_VERSION (the system's own package) active in the machine"

  local units=(labmq-server.service labmq-consumer.service) out
  $with_web && units+=(labmq-web.service)

  step "repository with $OLD_VERSION"
  repo_publish --clean "${old_debs[@]}"
  # As an operator adds it: the public key for Signed-By, then the deb822 source.
  inside sh -c 'mkdir -p /usr/share/keyrings && cat >/usr/share/keyrings/labmq-archive-keyring.gpg' <"$REPO_TREE/target/apt/labmq-archive-keyring.gpg"
  inside sh -c 'cat >/etc/apt/sources.list.d/labmq.sources' <"$REPO_TREE/target/apt/labmq.sources"
  apt_update
  local candidate
  candidate=$(inside apt-cache policy labmq-consumer | sed -n 's/^ *Candidate: //p')
  [ "$candidate" = "$OLD_VERSION" ] || fail "apt-cache policy labmq-consumer: candidate $candidate, want $OLD_VERSION"
  say "$REPO_URL (signed, Signed-By /usr/share/keyrings/labmq-archive-keyring.gpg): apt-get update; labmq-consumer candidate $candidate"

  step "install by name"
  QUEUE="labmq_e2e_${SYSTEM}_$$"
  # Installing starts the consumer. An administrator's drop-in points it at a queue of
  # this run's own and, until consumer.env says otherwise, at a broker that is not there:
  # the installation must not wait for it.
  inside sh -c "mkdir -p /etc/systemd/system/labmq-consumer.service.d &&
    printf '[Service]\nEnvironment=LABMQ_CONSUMER_QUEUE=%s\nEnvironment=LABMQ_CONSUMER_AMQP_URL=amqp://127.0.0.1:1/%%%%2f\n' '$QUEUE' >/etc/systemd/system/labmq-consumer.service.d/e2e.conf"
  say "drop-in labmq-consumer.service.d/e2e.conf: queue $QUEUE, broker amqp://127.0.0.1:1 (absent)"
  local apt_out started=$SECONDS
  apt_out=$(inside apt-get install -y labmq-consumer 2>&1) || { echo "$apt_out" >&2; fail "apt-get install -y labmq-consumer"; }
  say "apt-get install -y labmq-consumer in $((SECONDS - started)) s: $(inside dpkg-query -W -f '${Package} ${Version}, ' 'labmq-*' | sed 's/, $//')"
  [ $((SECONDS - started)) -lt 60 ] || fail "the installation took $((SECONDS - started)) s (did a start block it?)"
  local pkg
  for pkg in labmq-consumer labmq-server; do
    [ "$(inside dpkg-query -W -f '${db:Status-Status} ${Version}' "$pkg" 2>/dev/null)" = "installed $OLD_VERSION" ] ||
      { echo "$apt_out" >&2; fail "$pkg $OLD_VERSION is not installed after apt-get install labmq-consumer"; }
  done
  grep -q '^Recommended packages:\|^The following additional packages will be installed:' <<<"$apt_out" ||
    { echo "$apt_out" >&2; fail "apt did not say it pulls labmq-server in"; }
  wait_for 30 'systemctl is-active --quiet labmq-server' ||
    fail "labmq-server is $(inside systemctl is-active labmq-server || true) after install"
  # Queued without blocking the installation; waiting, and saying so, while the broker
  # is absent. That is $OLD_VERSION's behaviour (READY=1 once connected); from 0.2.0 on the
  # consumer is ready without its broker ("consumer: ready is not consuming" below).
  sleep 3
  local state
  state=$(inside systemctl is-active labmq-consumer || true)
  [ "$state" = activating ] || fail "with no broker labmq-consumer is $state, want activating (waiting)"
  say "labmq-server $OLD_VERSION came through Recommends; labmq-server active (MainPID $(prop labmq-server MainPID)), labmq-consumer $state: $(prop labmq-consumer StatusText)"
  apt_out=$(inside apt-get install -y labmq-tools 2>&1) || { echo "$apt_out" >&2; fail "apt-get install -y labmq-tools"; }
  out=$(inside labmq-call fact:6 2>&1) || fail "labmq-call ($OLD_VERSION) exited non-zero: $out"
  say "apt-get install -y labmq-tools: labmq-call fact:6 => ${out#fact:6 => }"

  step "consumer: configure"
  # The password goes in the 0640 root:labmq-consumer environment file, not in
  # consumer.toml; labmq-server and labmq-web (other users, other groups) cannot read it.
  [ "$(inside stat -c '%a %U %G' /etc/labmq/consumer.env)" = "640 root labmq-consumer" ] ||
    fail "/etc/labmq/consumer.env is not 640 root:labmq-consumer"
  inside sh -c "cat >> /etc/labmq/consumer.env" <<ENV
LABMQ_CONSUMER_AMQP_URL=$AMQP_URL_NO_PASSWORD
LABMQ_CONSUMER_AMQP_PASSWORD=$AMQP_PASSWORD
ENV
  say "consumer.env (640 root:labmq-consumer): broker $AMQP_URL_NO_PASSWORD, its password in the file, queue $QUEUE"
  # The operator's edit of a conffile, which the upgrade must keep: per-task records
  # (debug since 0.2.0; the journal checks below look for them).
  inside sh -c "sed -i 's/^# log_level = .*/log_level = \"info,labmq=debug\"/' /etc/labmq/consumer.toml"
  inside grep -qx 'log_level = "info,labmq=debug"' /etc/labmq/consumer.toml ||
    fail "could not set log_level in /etc/labmq/consumer.toml"
  inside systemctl reset-failed labmq-consumer
  inside systemctl restart labmq-consumer || fail "systemctl restart labmq-consumer"
  wait_for 60 'systemctl is-active --quiet labmq-consumer' ||
    fail "labmq-consumer is $(inside systemctl is-active labmq-consumer || true): $(prop labmq-consumer StatusText)"
  say "consumer.toml edited (log_level = \"info,labmq=debug\"); active, status: $(prop labmq-consumer StatusText)"

  upgrade_steps

  if $with_web; then
    step "install labmq-web by name"
    # Installing starts labmq-web too: a drop-in gives it its port and the queues of this
    # run (the machine's network is its own: the port is a fixed one).
    WEB_PORT=8080
    inside sh -c "mkdir -p /etc/systemd/system/labmq-web.service.d &&
      printf '[Service]\nEnvironment=LABMQ_WEB_LISTEN=127.0.0.1:%s\nEnvironment=LABMQ_WEB_QUEUE=%s\nEnvironment=LABMQ_WEB_RESULTS_QUEUE=%s.web\n' '$WEB_PORT' '$QUEUE' '$QUEUE' >/etc/systemd/system/labmq-web.service.d/e2e.conf"
    say "drop-in labmq-web.service.d/e2e.conf: listen 127.0.0.1:$WEB_PORT, queue $QUEUE, results queue $QUEUE.web"
    apt_out=$(inside apt-get install -y labmq-web 2>&1) || { echo "$apt_out" >&2; fail "apt-get install -y labmq-web"; }
    say "apt-get install -y labmq-web: $(inside dpkg-query -W -f '${Package} ${Version}' labmq-web)"
  fi

  step "installed packages"
  # One system user per daemon: a network-facing one cannot read another's secrets.
  for unit in "${units[@]}"; do
    inside getent passwd "${unit%.service}" >/dev/null || fail "no ${unit%.service} user after install"
    say "system user: $(inside getent passwd "${unit%.service}")"
  done
  for unit in "${units[@]}"; do
    [ "$(inside systemctl is-enabled "$unit" 2>&1)" = enabled ] || fail "$unit not enabled by postinst"
  done
  say "enabled: ${units[*]}"
  local ver
  ver=$(inside systemd-analyze verify --man=no "${units[@]/#//lib/systemd/system/}" 2>&1 | grep -E 'labmq|Unknown' || true)
  [ -z "$ver" ] || { echo "$ver" >&2; fail "systemd-analyze verify under $(inside systemctl --version | head -1)"; }
  say "systemd-analyze verify ${units[*]}: clean under $(inside systemctl --version | head -1 | cut -d' ' -f1-2)"
  [ "$(inside stat -c '%a %U' /etc/labmq/server.toml)" = "644 root" ] || fail "/etc/labmq/server.toml mode/owner"
  inside sh -c 'dpkg-query --control-show labmq-server conffiles 2>/dev/null || cat /var/lib/dpkg/info/labmq-server.conffiles' |
    grep -q /etc/labmq/server.toml || fail "/etc/labmq/server.toml is not a conffile"
  say "/etc/labmq/server.toml: conffile, 644 root"
  for page in labmq-server labmq-call; do
    inside test -s "/usr/share/man/man1/$page.1.gz" || fail "no man page for $page"
    inside test -s "/usr/share/bash-completion/completions/$page" || fail "no bash completion for $page"
  done
  say "man pages and completions in place"

  step "labmq-server started by postinst"
  wait_for 30 'systemctl is-active --quiet labmq-server' ||
    fail "labmq-server is $(inside systemctl is-active labmq-server) after install"
  local pid
  pid=$(prop labmq-server MainPID)
  [ "$(inside ps -o user= -p "$pid" | tr -d ' ')" = labmq-server ] || fail "labmq-server does not run as labmq-server"
  say "active (READY=1), MainPID $pid runs as labmq-server, status: $(prop labmq-server StatusText)"

  step "labmq-call"
  local out
  out=$(inside labmq-call fact:6 freq:abracadabra upper:hello 2>&1) || fail "labmq-call exited non-zero: $out"
  grep -qx 'fact:6 => 720' <<<"$out" || fail "labmq-call fact:6 printed: $out"
  say "labmq-call fact:6 freq:abracadabra upper:hello => $(tr '\n' ';' <<<"$out")"

  step "journal"
  out=$(inside journalctl --no-pager -u labmq-server -o cat)
  grep -q 'serving gRPC' <<<"$out" || { echo "$out" >&2; fail "no 'serving gRPC' record in journalctl -u labmq-server"; }
  grep -q 'configuration OK' <<<"$out" || fail "no ExecStartPre --check-config line in the journal"
  out=$(inside journalctl --no-pager -u labmq-server -o verbose --grep 'serving gRPC' 2>/dev/null ||
    inside journalctl --no-pager -u labmq-server -o verbose)
  grep -q '^ *LISTEN=127.0.0.1:50051' <<<"$out" || fail "the 'serving gRPC' record has no LISTEN field (not structured?)"
  say "journalctl -u labmq-server: check-config line, 'serving gRPC' as a structured record (LISTEN=127.0.0.1:50051)"

  step "reload"
  inside sh -c "sed -i 's/^# log_level = .*/log_level = \"debug\"/' /etc/labmq/server.toml"
  inside systemctl reload labmq-server || fail "systemctl reload labmq-server"
  wait_for 10 "journalctl -u labmq-server -o cat | grep -q 'reloaded: log_level is debug'" ||
    fail "no 'reloaded: log_level is debug' in the journal after systemctl reload"
  [ "$(prop labmq-server MainPID)" = "$pid" ] || fail "reload restarted the process"
  local status_text
  status_text=$(prop labmq-server StatusText)
  [[ $status_text == "serving on "* ]] || fail "after reload the status line is '$status_text', want the daemon's own 'serving on ...'"
  say "systemctl reload: same MainPID, journal says 'reloaded: log_level is debug', status still '$status_text'"

  step "bad configuration"
  inside sh -c 'echo "bogus_key = 1" >> /etc/labmq/server.toml'
  inside systemctl restart labmq-server >/dev/null 2>&1 && fail "restart with a bad key succeeded"
  # The failed start is systemd's own record; the check's stderr line comes through its
  # stdout stream and may be indexed a moment later.
  wait_for 10 "journalctl --no-pager -u labmq-server -o cat | grep -c bogus_key >/dev/null" ||
    { inside journalctl --no-pager -u labmq-server -o cat -n 30 >&2; fail "the journal does not name the bad key"; }
  out=$(inside journalctl --no-pager -u labmq-server -o cat -n 30)
  # ExecStartPre exits 78; the start limit (5 in 30 s) ends the retries.
  local state
  wait_for 30 '[ "$(systemctl is-active labmq-server)" = failed ] && journalctl -u labmq-server -o cat | grep -q "Start request repeated too quickly"' ||
    fail "with a bad configuration labmq-server is $(inside systemctl is-active labmq-server || true), want failed by the start limit"
  state=$(inside systemctl is-active labmq-server || true)
  sleep 3
  [ "$(inside systemctl is-active labmq-server || true)" = failed ] || fail "labmq-server restarted again after the start limit"
  say "restart with 'bogus_key' fails, journal names the key: $(grep -m1 -o 'unknown key "bogus_key"[^;]*' <<<"$out" || true); retries end at the start limit, state $state"
  inside sh -c "sed -i '/^bogus_key/d; s/^log_level = \"debug\"/# log_level = \"info\"/' /etc/labmq/server.toml"
  inside systemctl reset-failed labmq-server
  inside systemctl start labmq-server || fail "start after fixing the configuration"

  step "stop"
  inside systemctl stop labmq-server
  state=$(inside systemctl is-active labmq-server || true)
  [ "$state" = inactive ] || fail "after stop labmq-server is $state, want inactive"
  [ "$(prop labmq-server Result)" = success ] || fail "stop result $(prop labmq-server Result)"
  wait_for 10 "journalctl --no-pager -u labmq-server -o cat -n 20 | grep -c 'labmq-server stopped' >/dev/null" ||
    fail "no 'labmq-server stopped' in the journal"
  say "systemctl stop: inactive, Result=success, journal 'labmq-server stopped'"

  step "restart after SIGKILL"
  inside systemctl start labmq-server || fail "systemctl start labmq-server"
  pid=$(prop labmq-server MainPID)
  killed_and_restarted labmq-server 20
  [ "$(prop labmq-server MainPID)" != "$pid" ] || fail "same MainPID after SIGKILL"
  inside labmq-call fact:5 | grep -qx 'fact:5 => 120' || fail "labmq-call after the restart"
  say "systemctl kill -s KILL: restarted by systemd (MainPID $pid -> $(prop labmq-server MainPID), NRestarts now $(prop labmq-server NRestarts)), serving again"

  step "restart without dropping calls (labmq-server.socket)"
  [ "$(inside systemctl is-active labmq-server.socket)" = active ] || fail "labmq-server.socket is not active"
  [ "$(inside systemctl is-enabled labmq-server.socket)" = enabled ] || fail "labmq-server.socket is not enabled"
  out=$(inside journalctl --no-pager -u labmq-server -o cat -n 20)
  grep -q 'serving gRPC on 127.0.0.1:50051 (socket-activated)' <<<"$out" ||
    { echo "$out" >&2; fail "labmq-server did not take its socket from systemd"; }
  inside systemctl reset-failed labmq-server
  # Two callers in a loop, each call a new process and connection, while the service
  # restarts three times; every failed call is counted.
  inside sh -c 'rm -f /run/e2e-calls.*; for c in 1 2; do
      (n=0; f=0; while [ ! -e /run/e2e-calls.stop ]; do
         out=$(labmq-call fact:12 2>&1)
         if [ "$out" = "fact:12 => 479001600" ]; then n=$((n+1)); else f=$((f+1)); echo "$out" >>/run/e2e-calls.err; fi
       done; echo "$n $f" >/run/e2e-calls.$c) &
    done' </dev/null >/dev/null 2>&1
  local pids=() restart
  sleep 1
  for restart in 1 2 3; do
    pids+=("$(prop labmq-server MainPID)")
    inside systemctl restart labmq-server || fail "systemctl restart labmq-server ($restart)"
    sleep 1
  done
  pids+=("$(prop labmq-server MainPID)")
  inside touch /run/e2e-calls.stop
  wait_for 30 'test -s /run/e2e-calls.1 && test -s /run/e2e-calls.2' || fail "the calling loops did not finish"
  local ok=0 failed=0 n f
  for c in 1 2; do
    read -r n f <<<"$(inside cat /run/e2e-calls.$c)"
    ok=$((ok + n))
    failed=$((failed + f))
  done
  [ "$(printf '%s\n' "${pids[@]}" | sort -u | wc -l)" = 4 ] || fail "labmq-server did not restart 3 times (MainPIDs ${pids[*]})"
  if [ "$failed" != 0 ]; then
    inside cat /run/e2e-calls.err | sort | uniq -c | head -5 >&2
    fail "$failed of $((ok + failed)) calls failed across 3 restarts"
  fi
  [ "$ok" -gt 0 ] || fail "no call succeeded"
  say "3 x systemctl restart labmq-server (MainPIDs ${pids[*]}) under 2 calling loops: $ok calls, 0 failed"
  # The socket follows `listen` (its generator), after a daemon-reload.
  inside sh -c "sed -i 's/^# listen = .*/listen = \"127.0.0.2:50051\"/' /etc/labmq/server.toml"
  inside systemctl daemon-reload
  # Several starts in a row came before (start limit: 5 in 30 s).
  inside systemctl reset-failed labmq-server
  inside systemctl stop labmq-server.socket labmq-server && inside systemctl start labmq-server.socket labmq-server || fail "restart of socket and server after changing listen"
  out=$(inside labmq-call --server http://127.0.0.2:50051 fact:5 2>&1) || fail "labmq-call on the new listen address: $out"
  inside journalctl --no-pager -u labmq-server -o cat -n 5 | grep -q 'serving gRPC on 127.0.0.2:50051 (socket-activated)' ||
    fail "after listen = 127.0.0.2:50051 and daemon-reload, the server is not socket-activated there"
  inside sh -c "sed -i 's/^listen = \"127.0.0.2:50051\"/# listen = \"127.0.0.1:50051\"/' /etc/labmq/server.toml"
  inside systemctl daemon-reload
  inside systemctl reset-failed labmq-server
  inside systemctl stop labmq-server.socket labmq-server && inside systemctl start labmq-server.socket labmq-server || fail "restart of socket and server after restoring listen"
  say "listen = 127.0.0.2:50051 + daemon-reload: labmq-server.socket followed (generator), the server socket-activated there; restored"

  consumer_steps
  if $with_web; then web_steps; fi
  downgrade_steps

  purge_steps

  step "done"
  local glibc systemd
  glibc=$(inside ldd --version | awk 'NR == 1 { print $NF }')
  systemd=$(inside dpkg-query -W -f '${Version}' systemd)
  machine_stop "$SYSTEM"
  end_step
  STEPS_FILE=
  printf '| %s (%s) | %s | %s | %s | OK | %s s |\n' "$SYSTEM" "$(system_what "$SYSTEM")" "$glibc" "$systemd" \
    "$RABBITMQ_VERSION" "$((SECONDS - system_started))" >"$RESULTS/$SYSTEM.result"
  say "all steps passed on $SYSTEM ($(system_what "$SYSTEM")) in $((SECONDS - system_started)) s"
}
