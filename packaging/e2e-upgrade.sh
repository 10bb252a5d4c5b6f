# Sourced by packaging/e2e: the upgrade under a stream of tasks, the downgrade and the
# purge. Defines names only.


# From OLD_VERSION to the tree's version by `apt-get upgrade`, the new packages published
# beside the old ones, while a producer sends 2,000 tasks through it.
upgrade_steps() {
  step "upgrade under a stream of 2,000 tasks"
  local dir=/run/e2e-upgrade
  # 40 rounds of 50 tasks, each round its own labmq-produce --wait (a connection and
  # direct reply-to of its own) started every 0.3 s without waiting for the one before:
  # rounds 1-10 before apt-get starts, 11-30 while it runs, 31-40 after it returned.
  inside sh -c "cat >/run/e2e-produce.sh" <<SCRIPT
d=$dir
mkdir -p \$d
r=1
while [ \$r -le 40 ]; do
  if [ \$r = 11 ]; then while [ ! -e \$d/upgrading ]; do sleep 0.1; done; fi
  if [ \$r = 31 ]; then while [ ! -e \$d/upgraded ]; do sleep 0.1; done; fi
  tasks=
  i=1
  while [ \$i -le 50 ]; do
    case \$((i % 4)) in
      0) tasks="\$tasks fact:\$((1000 + r * 50 + i))" ;;
      1) tasks="\$tasks freq:round\${r}task\${i}" ;;
      2) tasks="\$tasks upper:round\${r}task\${i}" ;;
      3) tasks="\$tasks user\${r}x\${i}" ;;
    esac
    i=\$((i + 1))
  done
  (labmq-produce --queue $QUEUE --wait --json --timeout 300 \$tasks >\$d/\$r.out 2>\$d/\$r.err; echo \$? >\$d/\$r.rc) &
  touch \$d/started.\$r
  sleep 0.3
  r=\$((r + 1))
done
wait
touch \$d/finished
SCRIPT
  local cursor server_inv consumer_inv
  cursor=$(inside journalctl -n 1 --show-cursor -o cat | sed -n 's/^-- cursor: //p')
  server_inv=$(prop labmq-server InvocationID)
  consumer_inv=$(prop labmq-consumer InvocationID)
  inside systemd-run --quiet --unit e2e-produce --setenv=LABMQ_AMQP_URL="$AMQP_URL" sh /run/e2e-produce.sh ||
    fail "systemd-run of the producer"
  wait_for 60 "test -e $dir/started.10" || fail "the producer did not start 10 rounds"
  repo_publish "${debs[@]}"
  inside touch "$dir/upgrading"
  local started=$SECONDS apt_out
  apt_update
  # An edited conffile (consumer.toml) that the new package also changed: dpkg would ask;
  # unattended, --force-confold keeps the operator's file and puts the packaged one beside
  # it as consumer.toml.dpkg-dist (--force-confdef: no question for the unedited ones,
  # which are replaced).
  apt_out=$(inside apt-get upgrade -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold 2>&1) ||
    { echo "$apt_out" >&2; fail "apt-get upgrade"; }
  inside touch "$dir/upgraded"
  local apt_secs=$((SECONDS - started))
  local version pkg
  version=$(dpkg-deb -f "${debs[0]}" Version)
  for pkg in labmq-server labmq-consumer labmq-tools; do
    [ "$(inside dpkg-query -W -f '${Version}' "$pkg")" = "$version" ] ||
      { echo "$apt_out" >&2; fail "$pkg is at $(inside dpkg-query -W -f '${Version}' "$pkg") after apt-get upgrade, want $version"; }
  done
  say "published $version beside $OLD_VERSION; apt-get update && apt-get upgrade in $apt_secs s: labmq-server, labmq-consumer, labmq-tools $OLD_VERSION -> $version"

  wait_for 330 "test -e $dir/finished" || fail "the producer's rounds did not finish (results missing?)"
  local rcs results ids
  rcs=$(inside sh -c "cat $dir/*.rc" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
  [ "$rcs" = " 40 0;" ] || { inside sh -c "cat $dir/*.err" | sort | uniq -c | head >&2; fail "labmq-produce exit statuses (count status): $rcs"; }
  inside sh -c "cat $dir/*.out" >"$RUN_DIR/results.jsonl"
  results=$(wc -l <"$RUN_DIR/results.jsonl")
  grep -o '"id":"[^"]*"' "$RUN_DIR/results.jsonl" | cut -d'"' -f4 | sort -u >"$RUN_DIR/ids"
  ids=$(wc -l <"$RUN_DIR/ids")
  [ "$results" = 2000 ] && [ "$ids" = 2000 ] || fail "$results results for $ids distinct tasks, want 2000 of 2000"
  grep -c '"ok":true' "$RUN_DIR/results.jsonl" | grep -qx 2000 || fail "not every result is ok"
  # Duplicates: tasks processed more than once (a delivery the stopping consumer had not
  # acked comes again to the new one). Each processing is a "task processed" record with
  # the task's TASK_ID, at info before 0.2.0 and at debug (the kept log_level) after.
  local dup
  dup=$(inside journalctl --after-cursor="$cursor" -u labmq-consumer -o json | python3 -c '
import collections, json, sys
ids = set(open(sys.argv[1]).read().split())
seen = collections.Counter()
for line in sys.stdin:
    r = json.loads(line)
    if r.get("TASK_ID") in ids and str(r.get("MESSAGE", "")).startswith("task processed"):
        seen[r["TASK_ID"]] += 1
print(len(seen), sum(1 for n in seen.values() if n > 1), sum(n - 1 for n in seen.values()))
' "$RUN_DIR/ids")
  local recorded twice extra
  read -r recorded twice extra <<<"$dup"
  [ "$recorded" = 2000 ] || fail "the consumer's journal has 'task processed' records for $recorded of the 2000 tasks"

  # Each service restarted once: one "Started …" record (systemd's job-done message, by
  # its text: systemd 245 files it without the MESSAGE_ID newer ones give it) per unit
  # since the stream began (a crash and its Restart= would make two), a new invocation.
  local unit starts
  for unit in labmq-server labmq-consumer; do
    starts=$(inside journalctl --after-cursor="$cursor" -o cat "UNIT=$unit.service" | grep -c '^Started ' || true)
    [ "$starts" = 1 ] || { inside journalctl --after-cursor="$cursor" -o short "UNIT=$unit.service" >&2; fail "$unit started $starts times during the upgrade, want 1"; }
    wait_for 30 "systemctl is-active --quiet $unit" || fail "$unit is not active after the upgrade"
  done
  [ "$(prop labmq-server InvocationID)" != "$server_inv" ] || fail "labmq-server was not restarted by the upgrade"
  [ "$(prop labmq-consumer InvocationID)" != "$consumer_inv" ] || fail "labmq-consumer was not restarted by the upgrade"
  UPGRADED_CONSUMER_INVOCATION=$(prop labmq-consumer InvocationID)
  say "2,000 tasks in 40 rounds through the upgrade: 2000 results for 2000 tasks, 0 lost, all ok; $twice task(s) processed twice ($extra duplicate result(s)); labmq-server and labmq-consumer each started once"

  step "upgrade: configuration"
  # The edited conffile stays as the operator left it; the packaged one is beside it.
  inside grep -qx 'log_level = "info,labmq=debug"' /etc/labmq/consumer.toml || fail "the edit of consumer.toml was lost"
  inside test -f /etc/labmq/consumer.toml.dpkg-dist || fail "no consumer.toml.dpkg-dist beside the kept consumer.toml"
  inside grep -q '^# log_summary_secs' /etc/labmq/consumer.toml.dpkg-dist || fail "consumer.toml.dpkg-dist is not $version's"
  out=$(inside sh -c 'ls /etc/labmq/*.dpkg-* 2>/dev/null' | tr '\n' ' ')
  [ "$out" = "/etc/labmq/consumer.toml.dpkg-dist " ] || fail "dpkg files in /etc/labmq: $out, want consumer.toml.dpkg-dist alone"
  # The unedited server.toml is replaced: its new metrics_listen (127.0.0.1:50081) applies.
  inside grep -qx 'metrics_listen = "127.0.0.1:50081"' /etc/labmq/server.toml || fail "server.toml is not $version's"
  out=$(in_net curl -fsS http://127.0.0.1:50081/metrics) || fail "no /metrics on 127.0.0.1:50081 after the upgrade"
  grep -q '^labmq_server_grpc_calls_total' <<<"$out" || fail "/metrics on 127.0.0.1:50081 has no labmq_server_grpc_calls_total"
  say "consumer.toml kept (log_level = \"info,labmq=debug\"), consumer.toml.dpkg-dist beside it; server.toml (unedited) replaced: metrics_listen = 127.0.0.1:50081 answers /metrics"
  # The periodic summary (log_summary_secs, new in $version, absent from the kept
  # consumer.toml) is checked later, once its default interval of 60 s has passed.
}

# Back to OLD_VERSION with apt (--allow-downgrades), every labmq package at once: the
# older services run again, and nothing of the newer version stays (its socket unit).
downgrade_steps() {
  step "downgrade to $OLD_VERSION"
  local pkgs=() pkg out
  for pkg in $(inside dpkg-query -W -f '${db:Status-Status} ${Package}\n' 'labmq-*' | awk '$1 == "installed" { print $2 }'); do
    pkgs+=("$pkg=$OLD_VERSION")
  done
  out=$(inside apt-get install -y --allow-downgrades -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${pkgs[@]}" 2>&1) ||
    { echo "$out" >&2; fail "apt-get install --allow-downgrades ${pkgs[*]}"; }
  for pkg in "${pkgs[@]}"; do
    [ "$(inside dpkg-query -W -f '${Version}' "${pkg%=*}")" = "$OLD_VERSION" ] || fail "${pkg%=*} is not at $OLD_VERSION after the downgrade"
  done
  local unit
  for unit in labmq-server labmq-consumer $($with_web && echo labmq-web); do
    wait_for 60 "systemctl is-active --quiet $unit" ||
      fail "$unit is $(inside systemctl is-active "$unit" || true) after the downgrade: $(prop "$unit" StatusText)"
  done
  local call_out
  call_out=$(inside labmq-call fact:6 2>&1) || fail "labmq-call after the downgrade: $call_out"
  # The older server binds its address itself: the socket unit must have let it go.
  inside journalctl --no-pager -u labmq-server -o cat -n 20 | grep -q 'serving gRPC on 127.0.0.1:50051' ||
    fail "the downgraded labmq-server does not serve on 127.0.0.1:50051"
  [ "$(inside systemctl is-active labmq-server.socket || true)" = inactive ] || fail "labmq-server.socket is still active after the downgrade"
  out=$(inside sh -c 'systemctl list-unit-files --no-legend "labmq-server.socket"; find /etc/systemd /lib/systemd /var/lib/systemd -name "labmq-server.socket*" -o -name "labmq-server-socket-generator"' || true)
  [ -z "$out" ] || fail "the downgrade left: $out"
  out=$(inside sh -c 'ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null' | grep 'labmq.*socket' || true)
  [ -z "$out" ] || fail "the downgrade left deb-systemd-helper state: $out"
  say "apt-get install --allow-downgrades ${pkgs[*]}: $(for u in labmq-server labmq-consumer $($with_web && echo labmq-web); do printf '%s %s, ' "$u" "$(inside systemctl is-active "$u")"; done)labmq-call fact:6 => ${call_out#fact:6 => }; labmq-server.socket stopped and forgotten (no unit file, symlink or state)"
}

# The operator's cleanup of this run's drop-ins and queues, then `apt-get purge`: nothing of
# labmq stays but the system users.
purge_steps() {
  step "purge"
  # The drop-ins and queues of this run go first (the operator's, not the packages').
  inside systemctl stop labmq-consumer
  if $with_web; then inside systemctl stop labmq-web; fi
  inside rm -rf /etc/systemd/system/labmq-consumer.service.d /etc/systemd/system/labmq-web.service.d
  inside systemctl daemon-reload
  local q
  for q in $(inside rabbitmqctl -q list_queues name | grep "^$QUEUE" || true); do
    inside rabbitmqctl -q delete_queue "$q" >/dev/null
  done
  local uid gid
  uid=$(inside id -u labmq-server)
  gid=$(inside id -g labmq-server)
  inside sh -c 'apt-get purge -y "labmq-*"' >/dev/null 2>&1 || fail "apt-get purge"
  # Then the repository, as an operator who no longer wants it removes it: its source, its
  # key, apt's cached downloads.
  inside rm -f /etc/apt/sources.list.d/labmq.sources /usr/share/keyrings/labmq-archive-keyring.gpg
  inside apt-get clean
  out=$(inside dpkg-query -W -f '${Package} ${db:Status-Status}\n' 'labmq-*' 2>/dev/null | grep -v ' not-installed$' || true)
  [ -z "$out" ] || fail "packages left after purge: $out"
  # Debian practice: system users stay on purge, so their UIDs are never reused.
  inside getent passwd labmq-server >/dev/null || fail "user labmq-server removed by purge"
  inside getent group labmq-server >/dev/null || fail "group labmq-server removed by purge"
  out=$(inside systemctl list-unit-files --no-legend 'labmq*' || true)
  [ -z "$out" ] || fail "unit files left after purge: $out"
  out=$(inside systemctl list-units --all --no-legend 'labmq*' | grep -v 'not-found' || true)
  [ -z "$out" ] || fail "units still loaded after purge: $out"
  out=$(inside find / -xdev \( -path /proc -o -path /sys \) -prune -o \
    \( -name '*labmq*' -o -uid "$uid" -o -gid "$gid" \) -print 2>/dev/null | grep -v '^/var/log/journal' || true)
  [ -z "$out" ] || fail "files left after purge: $out"
  say "apt-get purge 'labmq-*' (after a downgrade), the source and key removed: no package, unit or file (by name or by uid $uid) left; the system users stay"

}
