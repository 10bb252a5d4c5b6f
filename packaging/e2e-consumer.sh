# Sourced by packaging/e2e: the consumer and web steps, after the upgrade. Defines names only.


# Runs when labmq-consumer and labmq-produce are packaged.
consumer_steps() {
  step "consumer: log_summary_secs, absent from the kept consumer.toml"
  # The consumer the upgrade started logs a summary every log_summary_secs; the kept
  # consumer.toml does not name that key, so its built-in default, 60 s, applies.
  local queue=$QUEUE summary
  wait_for 90 "journalctl _SYSTEMD_INVOCATION_ID=$UPGRADED_CONSUMER_INVOCATION -o verbose | grep -Eq '^ *INTERVAL_SECS=(59\.9|60\.[0-9])'" ||
    fail "no summary of a 60 s interval from the consumer the upgrade started"
  summary=$(inside journalctl _SYSTEMD_INVOCATION_ID="$UPGRADED_CONSUMER_INVOCATION" -o cat | grep -m1 '^tasks in the last 6\|^tasks in the last 59' || true)
  say "the upgraded consumer's first periodic summary: $summary"

  step "consumer: start"
  inside systemctl reset-failed labmq-consumer
  inside systemctl restart labmq-consumer || fail "systemctl restart labmq-consumer"
  wait_for 60 'systemctl is-active --quiet labmq-consumer' ||
    fail "labmq-consumer is $(inside systemctl is-active labmq-consumer || true): $(prop labmq-consumer StatusText)"
  local pid
  pid=$(prop labmq-consumer MainPID)
  say "active (READY=1), MainPID $pid, status: $(prop labmq-consumer StatusText)"

  step "consumer: labmq-produce --wait"
  local out
  out=$(inside env LABMQ_AMQP_URL="$AMQP_URL" labmq-produce --queue "$queue" \
    --wait --timeout 60 fact:6 freq:abracadabra user42 2>&1) || fail "labmq-produce --wait: $out"
  grep -qx 'fact:6 => 720' <<<"$out" || fail "labmq-produce fact:6: $out"
  grep -q '^freq:abracadabra => a ' <<<"$out" || fail "labmq-produce freq:abracadabra: $out"
  grep -q '^user42 => group [AB]$' <<<"$out" || fail "labmq-produce user42: $out"
  say "labmq-produce --wait fact:6 freq:abracadabra user42 => $(tr '\n' ';' <<<"$out")"

  ready_steps

  step "consumer: journal"
  out=$(inside journalctl --no-pager -u labmq-consumer -o verbose)
  grep -q '^ *TASK_ID=' <<<"$out" || fail "no record with a TASK_ID field in journalctl -u labmq-consumer"
  grep -q '^ *KIND=' <<<"$out" || fail "no record with a KIND field"
  local task_id
  # The first one (no pipe into head: after thousands of records, pipefail would see SIGPIPE).
  task_id=$(sed -n '/^ *TASK_ID=/{s/^ *TASK_ID=//;p;q}' <<<"$out")
  inside journalctl --no-pager -u labmq-consumer "TASK_ID=$task_id" -o cat | grep -c . >/dev/null ||
    fail "journalctl -u labmq-consumer TASK_ID=$task_id finds nothing"
  say "journalctl -u labmq-consumer: $(grep -c '^ *TASK_ID=' <<<"$out") structured task records (TASK_ID, KIND, ...); 'journalctl TASK_ID=$task_id' finds its record"

  if [ -n "${LABMQ_CAPTURE_DIR:-}" ]; then
    step "captures for the README"
    capture produce-wait.txt env LABMQ_AMQP_URL="$AMQP_URL" labmq-produce --queue "$queue" \
      --wait --timeout 60 fact:6 freq:abracadabra user42 upper:hello
    capture systemctl-status.txt systemctl status --no-pager --lines=0 labmq-server labmq-consumer
    capture journalctl-consumer.txt journalctl --no-pager -u labmq-consumer -n 12
    capture journalctl-consumer-verbose.txt sh -c "journalctl --no-pager -u labmq-consumer -o verbose -g 'task processed' -n 1"
    capture journalctl-server.txt journalctl --no-pager -u labmq-server -n 8
    say "written to $LABMQ_CAPTURE_DIR/$SYSTEM"
  fi

  step "consumer: 20,000 tasks at info, no journald suppression"
  # The operator's level, info (no per-task records; the kept consumer.toml says debug),
  # and a summary every 5 s instead of 60 so that the run's summaries come within the
  # step, in a drop-in of their own.
  inside sh -c "printf '[Service]\nEnvironment=LABMQ_CONSUMER_LOG_LEVEL=info\nEnvironment=LABMQ_CONSUMER_LOG_SUMMARY_SECS=5\n' >/etc/systemd/system/labmq-consumer.service.d/logs.conf"
  inside systemctl daemon-reload
  inside systemctl restart labmq-consumer || fail "systemctl restart labmq-consumer (info, summaries every 5 s)"
  wait_for 60 'systemctl is-active --quiet labmq-consumer' || fail "labmq-consumer not active at log_level info"
  local cursor
  cursor=$(inside journalctl -n 1 --show-cursor -o cat | sed -n 's/^-- cursor: //p')
  # 19,800 tasks that succeed and 200 that fail (fact:100001 is above max_factorial_n):
  # failures are dead-lettered and logged at warn, at most 10 per 10 s.
  inside sh -c "awk 'BEGIN { for (i = 1; i <= 20000; i++) {
      if (i % 100 == 0) print \"fact:100001\"; else if (i % 4 == 0) print \"fact:\" (i % 500 + 1);
      else if (i % 4 == 1) print \"freq:text\" i; else if (i % 4 == 2) print \"upper:text\" i; else print \"user\" i } }' >/run/e2e-20k.tasks"
  local rc=0 started=$SECONDS
  inside env LABMQ_AMQP_URL="$AMQP_URL" sh -c "labmq-produce --queue $queue --wait --json --timeout 600 - </run/e2e-20k.tasks >/run/e2e-20k.out 2>/run/e2e-20k.err" || rc=$?
  local secs=$((SECONDS - started)) ok failed
  [ "$rc" = 1 ] || fail "labmq-produce of 20,000 tasks exited $rc, want 1 (some results are errors): $(inside head -3 /run/e2e-20k.err)"
  ok=$(inside grep -c '"ok":true' /run/e2e-20k.out || true)
  failed=$(inside grep -c '"ok":false' /run/e2e-20k.out || true)
  [ "$ok $failed" = "19800 200" ] || fail "results: $ok ok, $failed failed, want 19800 and 200"
  # What the journal tells an operator: the summaries add up to every task, and each
  # failure is either a record of its own or counted as held back.
  local sums records s_ok s_failed warns held
  for _ in $(seq 60); do
    sums=$(inside journalctl --after-cursor="$cursor" -u labmq-consumer -o json | python3 -c '
import json, sys
records = ok = failed = warns = held = 0
for line in sys.stdin:
    r = json.loads(line)
    if "INTERVAL_SECS" in r:
        records += 1
        ok += int(r.get("OK", 0))
        failed += int(r.get("FAILED", 0))
    elif str(r.get("MESSAGE", "")).startswith("task failed"):
        warns += 1
    held += int(r.get("HELD_BACK", 0))
print(records, ok, failed, warns, held)')
    read -r records s_ok s_failed warns held <<<"$sums"
    [ "$s_ok $s_failed $((warns + held))" = "19800 200 200" ] && break
    sleep 1
  done
  [ "$s_ok $s_failed" = "19800 200" ] ||
    fail "the consumer's summaries count $s_ok ok and $s_failed failed, want 19800 and 200"
  [ $((warns + held)) = 200 ] || fail "$warns failure records and $held held back, want 200 in all"
  [ "$warns" -lt 200 ] || fail "all 200 failures have a record: the rate limit did not apply"
  out=$(inside journalctl --after-cursor="$cursor" --no-pager -o cat | grep 'Suppressed' || true)
  [ -z "$out" ] || { echo "$out" >&2; fail "journald suppressed messages during 20,000 tasks"; }
  local lines
  lines=$(inside journalctl --after-cursor="$cursor" -u labmq-consumer -o cat | wc -l)
  say "labmq-produce --wait of 20,000 tasks in $secs s: 19800 ok, 200 failed; journalctl -u labmq-consumer: $lines lines, $records summaries adding to 19800 ok / 200 failed, $warns failure records + $held held back = 200; no 'Suppressed' line in the journal"
  say "a summary: $(inside journalctl --after-cursor="$cursor" -u labmq-consumer -o cat | grep -m1 '^tasks in the last')"
  say "a failure: $(inside journalctl --after-cursor="$cursor" -u labmq-consumer -o cat | grep -m1 '^task failed')"
  if [ -n "${LABMQ_CAPTURE_DIR:-}" ]; then
    capture journalctl-consumer-20k.txt sh -c "journalctl --no-pager -u labmq-consumer -n 12"
  fi
  # Back to the kept consumer.toml's level at the next start (the older version, after the
  # downgrade, would refuse log_summary_secs, a key it does not know).
  inside rm -f /etc/systemd/system/labmq-consumer.service.d/logs.conf
  inside systemctl daemon-reload

  step "consumer: stop and SIGKILL"
  inside systemctl stop labmq-consumer
  [ "$(inside systemctl is-active labmq-consumer || true)" = inactive ] || fail "consumer not inactive after stop"
  [ "$(prop labmq-consumer Result)" = success ] || fail "consumer stop result $(prop labmq-consumer Result)"
  inside systemctl start labmq-consumer || fail "systemctl start labmq-consumer"
  pid=$(prop labmq-consumer MainPID)
  killed_and_restarted labmq-consumer 60
  say "stop: inactive, Result=success; SIGKILL: restarted (MainPID $pid -> $(prop labmq-consumer MainPID))"
  # Where the system's RabbitMQ is 4.x: the task queue as a quorum queue under the
  # policies an operator applies.
  case $(system_field "$SYSTEM" 5) in 4.*) quorum_steps ;; esac
}

# Runs when labmq-web is packaged too, after consumer_steps (whose consumer, still on
# $QUEUE and the machine's broker, computes what labmq-web submits).
web_steps() {
  local base=http://127.0.0.1:$WEB_PORT out id
  step "web: started by postinst"
  wait_for 30 'systemctl is-active --quiet labmq-web' ||
    fail "labmq-web is $(inside systemctl is-active labmq-web || true): $(prop labmq-web StatusText)"
  [ "$(inside stat -c '%U %a' /var/lib/labmq-web)" = "labmq-web 750" ] ||
    fail "/var/lib/labmq-web is $(inside stat -c '%U %a' /var/lib/labmq-web), want labmq-web 750"
  [ "$(inside stat -c '%a %U %G' /etc/labmq/web.env)" = "640 root labmq-web" ] ||
    fail "/etc/labmq/web.env is not 640 root:labmq-web"
  inside test -s /usr/share/man/man1/labmq-web.1.gz || fail "no man page for labmq-web"
  # The broker as the consumer has it, its password in the 0640 environment file.
  inside sh -c "cat >> /etc/labmq/web.env" <<EOF
LABMQ_WEB_AMQP_URL=$AMQP_URL_NO_PASSWORD
LABMQ_WEB_AMQP_PASSWORD=$AMQP_PASSWORD
EOF
  inside systemctl restart labmq-web || fail "systemctl restart labmq-web: $(prop labmq-web StatusText)"
  wait_for 30 "systemctl show -p StatusText --value labmq-web | grep -q 'storing results'" ||
    fail "labmq-web never connected to the broker: $(prop labmq-web StatusText)"
  say "active (READY=1), state directory /var/lib/labmq-web (labmq-web 750), status: $(prop labmq-web StatusText)"

  step "web: submit through the API, see the result"
  out=$(in_net curl -fsS -X POST -H 'Content-Type: application/json' -d '["fact:6, fact:x"]' "$base/api/tasks") ||
    fail "POST $base/api/tasks failed: $out"
  id=$(python3 -c 'import json, sys; r = json.load(sys.stdin); assert r["accepted"] == 1 and r["rejected"] == 1, r; print(r["tasks"][0]["id"])' <<<"$out") ||
    fail "POST /api/tasks answered $out"
  local deadline=$((SECONDS + 60))
  until out=$(in_net curl -fsS "$base/api/results/$id" 2>/dev/null) && grep -q '"short":"720"' <<<"$out"; do
    [ $SECONDS -lt $deadline ] || fail "no result for $id in labmq-web within 60 s: $out"
    sleep 0.5
  done
  in_net curl -fsS "$base/" | grep -q 'fact:6' || fail "GET / does not list fact:6"
  out=$(in_net curl -sS "$base/healthz")
  grep -q '"status":"ok"' <<<"$out" || fail "/healthz: $out"
  inside test -s /var/lib/labmq-web/results.sqlite3 || fail "no database in /var/lib/labmq-web"
  out=$(inside journalctl --no-pager -u labmq-web -o cat)
  grep -q 'serving' <<<"$out" || fail "no 'serving' record in journalctl -u labmq-web"
  say "POST /api/tasks [\"fact:6, fact:x\"]: 1 accepted, 1 rejected; GET /api/results/$id: 720; /healthz ok; journal 'serving'"

}

# The consumer's metric that says whether deliveries flow (1) or not (0).
consuming_metric() {
  in_net curl -fsS http://127.0.0.1:9882/metrics | sed -n 's/^labmq_consumer_consuming \([0-9]*\)$/\1/p'
}

# Ready is not consuming (0.2.0 on): READY=1 comes once the consumer is configured and
# started, whether or not the broker answers. With RabbitMQ stopped, a restart returns at
# once, the unit is active and the boot's jobs are done (nothing waits on it), and the
# status line and labmq_consumer_consuming say what it waits for; once the broker is back,
# tasks flow. A drop-in opens the metrics (the kept 0.1.0 consumer.toml has no
# metrics_listen), taken out again at the end; on a port below the ephemeral range (the
# packaged 50082 is inside it, where the thousands of connections of the steps before may
# hold it).
ready_steps() {
  step "consumer: ready is not consuming (broker stopped, then started)"
  local queue=$QUEUE out t0 restart_ms status_text state jobs before after
  inside sh -c "printf '[Service]\nEnvironment=LABMQ_CONSUMER_METRICS_LISTEN=127.0.0.1:9882\n' >/etc/systemd/system/labmq-consumer.service.d/metrics.conf"
  inside systemctl daemon-reload
  inside systemctl stop rabbitmq-server || fail "systemctl stop rabbitmq-server"
  inside systemctl reset-failed labmq-consumer
  t0=$(date +%s%3N)
  inside systemctl restart labmq-consumer ||
    { sleep 1; inside journalctl --no-pager -n 12 -u labmq-consumer -o cat >&2; fail "systemctl restart labmq-consumer with the broker stopped failed: $(prop labmq-consumer StatusText); listening: $(in_net ss -Hltnp | tr -s ' ' | tr '\n' ';')"; }
  restart_ms=$(($(date +%s%3N) - t0))
  # The operator-facing bound: a start that waited for the broker would end only at
  # TimeoutStartSec (30 s) and fail.
  [ "$restart_ms" -lt 10000 ] || fail "systemctl restart labmq-consumer with the broker stopped took $restart_ms ms, want under 10 s"
  state=$(inside systemctl is-active labmq-consumer || true)
  [ "$state" = active ] || fail "with the broker stopped labmq-consumer is $state after its restart, want active"
  wait_for 15 "systemctl show -p StatusText --value labmq-consumer | grep -q '^waiting for RabbitMQ at '" ||
    fail "with the broker stopped the status line is '$(prop labmq-consumer StatusText)', want 'waiting for RabbitMQ at URL: REASON'"
  status_text=$(prop labmq-consumer StatusText)
  before=$(consuming_metric) || fail "no /metrics on 127.0.0.1:9882 (LABMQ_CONSUMER_METRICS_LISTEN)"
  [ "$before" = 0 ] || fail "labmq_consumer_consuming is '$before' with the broker stopped, want 0"
  state=$(inside systemctl is-system-running || true)
  case $state in running | degraded) ;; *) fail "with the consumer waiting for its broker the system is '$state', want running or degraded" ;; esac
  jobs=$(inside systemctl list-jobs --no-legend | grep -v '^No jobs' || true)
  [ -z "$jobs" ] || fail "systemctl list-jobs is not empty with the consumer waiting for its broker: $jobs"
  say "rabbitmq-server stopped: systemctl restart labmq-consumer returned in $restart_ms ms, active, status '$status_text', labmq_consumer_consuming 0; system $state, no job pending"
  inside systemctl start rabbitmq-server || fail "systemctl start rabbitmq-server: $(inside journalctl --no-pager -n 20 -u rabbitmq-server -o cat)"
  wait_for 90 "systemctl show -p StatusText --value labmq-consumer | grep -q '^consuming from $queue on '" ||
    fail "the broker is back and the status line is '$(prop labmq-consumer StatusText)', want 'consuming from $queue on NODE'"
  out=$(inside env LABMQ_AMQP_URL="$AMQP_URL" labmq-produce --queue "$queue" --wait --timeout 60 fact:7 2>&1) ||
    fail "labmq-produce --wait once the broker is back: $out"
  [ "$out" = "fact:7 => 5040" ] || fail "labmq-produce --wait fact:7 once the broker is back: $out"
  after=$(consuming_metric)
  [ "$after" = 1 ] || fail "labmq_consumer_consuming is '$after' once consuming, want 1"
  say "rabbitmq-server started: status '$(prop labmq-consumer StatusText)', labmq_consumer_consuming 1, labmq-produce --wait fact:7 => 5040"
  inside rm -f /etc/systemd/system/labmq-consumer.service.d/metrics.conf
  inside systemctl daemon-reload
}

# The task queue as a quorum queue (queue_type = "quorum") under the two policies an
# operator applies with rabbitmqctl (those of packaging/rabbitmq's definitions): dead
# letters at least once to QUEUE.dead, publishes refused when full, a delivery limit of 20
# for tasks and none for dead letters. A queue of its own (a queue's type cannot change);
# the consumer goes back to the classic $QUEUE after.
quorum_steps() {
  step "consumer: quorum queue under the operator's policies"
  local qq=${QUEUE}_quorum out queues
  inside rabbitmqctl -q set_policy labmq-task-queue "^$qq\$" \
    "{\"dead-letter-exchange\":\"\",\"dead-letter-routing-key\":\"$qq.dead\",\"dead-letter-strategy\":\"at-least-once\",\"overflow\":\"reject-publish\",\"delivery-limit\":20}" \
    --apply-to queues >/dev/null || fail "rabbitmqctl set_policy labmq-task-queue"
  inside rabbitmqctl -q set_policy labmq-dead-letters "^$qq\\.dead\$" '{"delivery-limit":-1}' --apply-to queues >/dev/null ||
    fail "rabbitmqctl set_policy labmq-dead-letters"
  inside sh -c "printf '[Service]\nEnvironment=LABMQ_CONSUMER_QUEUE=%s\nEnvironment=LABMQ_CONSUMER_QUEUE_TYPE=quorum\n' '$qq' >/etc/systemd/system/labmq-consumer.service.d/quorum.conf"
  inside systemctl daemon-reload
  # Several starts in a row came before (start limit: 5 in 30 s).
  inside systemctl reset-failed labmq-consumer
  inside systemctl restart labmq-consumer || fail "systemctl restart labmq-consumer (quorum)"
  wait_for 60 "systemctl show -p StatusText --value labmq-consumer | grep -q '^consuming from $qq on '" ||
    fail "labmq-consumer on the quorum queue: '$(prop labmq-consumer StatusText)'"
  # fact:100001 fails (above max_factorial_n): it must reach $qq.dead.
  local rc=0
  out=$(inside env LABMQ_AMQP_URL="$AMQP_URL" LABMQ_PRODUCE_QUEUE_TYPE=quorum labmq-produce --queue "$qq" \
    --wait --timeout 60 fact:6 upper:quorum fact:100001 2>&1) || rc=$?
  [ "$rc" = 1 ] || fail "labmq-produce --wait through the quorum queue exited $rc, want 1 (fact:100001 fails): $out"
  grep -qx 'fact:6 => 720' <<<"$out" && grep -qx 'upper:quorum => Processed by server: QUORUM' <<<"$out" ||
    fail "labmq-produce --wait through the quorum queue: $out"
  queues=
  for _ in $(seq 30); do
    queues=$(inside rabbitmqctl -q list_queues name type policy messages --formatter json | python3 -c '
import json, sys
qs = {q["name"]: q for q in json.load(sys.stdin)}
a, d = qs.get(sys.argv[1], {}), qs.get(sys.argv[1] + ".dead", {})
print(a.get("type"), a.get("policy"), d.get("type"), d.get("policy"), d.get("messages"))' "$qq")
    [ "$queues" = "quorum labmq-task-queue quorum labmq-dead-letters 1" ] && break
    sleep 1
  done
  [ "$queues" = "quorum labmq-task-queue quorum labmq-dead-letters 1" ] ||
    fail "rabbitmqctl list_queues: $qq and $qq.dead are '$queues', want quorum under labmq-task-queue, quorum under labmq-dead-letters holding the 1 failed task"
  say "policies labmq-task-queue and labmq-dead-letters set with rabbitmqctl; labmq-produce --wait fact:6 upper:quorum fact:100001 through quorum queue $qq => $(tr '\n' ';' <<<"$out"); $qq.dead (quorum, labmq-dead-letters) holds the failed task"
  inside rm -f /etc/systemd/system/labmq-consumer.service.d/quorum.conf
  inside systemctl daemon-reload
  inside systemctl reset-failed labmq-consumer
  inside systemctl restart labmq-consumer || fail "systemctl restart labmq-consumer (back to $QUEUE)"
  wait_for 60 "systemctl show -p StatusText --value labmq-consumer | grep -q '^consuming from $QUEUE on '" ||
    fail "labmq-consumer back on $QUEUE: '$(prop labmq-consumer StatusText)'"
}
