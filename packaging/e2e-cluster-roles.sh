# Sourced by packaging/e2e-cluster: each machine's role, installed from the .debs with apt
# and configured as an operator would (/etc/labmq/*.toml, *.env, /etc/labmq/tls/).
# Defines names only; uses e2e-cluster's inside, put, amqp_toml, ADDR and PASSWORD.

# Installs the packages of machine $1's role (apt, from the local .debs).
install_debs() {
  local m=$1 out
  shift
  out=$(inside "$m" sh -c "cd /mnt/labmq-debs && apt-get install -y --no-install-recommends $*" 2>&1) ||
    { echo "$out" >&2; fail "apt-get install $* on $m (the machines have no route to a mirror: a dependency missing from the focal root cannot be fetched)"; }
  local deb
  for deb in "$@"; do
    deb=${deb#./}
    inside "$m" dpkg-query -W -f '${db:Status-Status}' "${deb%%_*}" 2>/dev/null | grep -qx installed ||
      { echo "$out" >&2; fail "${deb%%_*} is not installed on $m after apt-get install"; }
  done
}

# Copies ca.crt and the machine's certificate and key to /etc/labmq/tls, the key owned by
# $2 (the service's user) and mode 600.
install_tls() {
  local m=$1 owner=$2
  inside "$m" sh -c "install -d -m 755 /etc/labmq/tls &&
    install -m 644 /mnt/labmq-tls/ca.crt /etc/labmq/tls/ca.crt &&
    install -m 644 /mnt/labmq-tls/$m.crt /etc/labmq/tls/$m.crt &&
    install -m 600 -o $owner -g $owner /mnt/labmq-tls/$m.key /etc/labmq/tls/$m.key"
}

# Writes file $2 inside machine $1 from stdin, then mode $3 and owner $4.
put() { inside "$1" sh -c "cat > '$2' && chmod $3 '$2' && chown $4 '$2'"; }

setup_server() {
  install_debs server './labmq-server_*.deb'
  install_tls server labmq-server
  # mTLS: only clients with a certificate of the test's CA get an answer.
  put server /etc/labmq/server.toml 644 root:root <<EOF
listen = "0.0.0.0:50051"
tls_cert_file = "/etc/labmq/tls/server.crt"
tls_key_file = "/etc/labmq/tls/server.key"
tls_client_ca_file = "/etc/labmq/tls/ca.crt"
EOF
  # labmq-server.socket follows `listen` after a daemon-reload (its generator).
  inside server systemctl daemon-reload
  inside server systemctl stop labmq-server.socket labmq-server && inside server systemctl start labmq-server.socket labmq-server || fail "systemctl restart labmq-server: $(inside server journalctl -n 5 -o cat -u labmq-server)"
  wait_inside server 30 'systemctl is-active --quiet labmq-server' || fail "labmq-server not active on server"
}

setup_consumer() {
  local m=$1
  install_debs "$m" './labmq-consumer_*.deb'
  install_tls "$m" labmq-consumer
  {
    amqp_toml "$m"
    cat <<EOF
# Every result is also kept here, for the test's count of duplicates.
results_queue = "labmq-e2e.results"
grpc_targets = ["https://${ADDR[server]}:50051"]
grpc_ca_file = "/etc/labmq/tls/ca.crt"
grpc_cert_file = "/etc/labmq/tls/$m.crt"
grpc_key_file = "/etc/labmq/tls/$m.key"
# Few tasks at a time, so the stream lasts long enough to break things under it.
concurrency = 2
prefetch = 4
EOF
  } | put "$m" /etc/labmq/consumer.toml 644 root:root
  echo "LABMQ_CONSUMER_AMQP_PASSWORD=$PASSWORD" | put "$m" /etc/labmq/consumer.env 640 root:labmq-consumer
  inside "$m" systemctl reset-failed labmq-consumer
  inside "$m" systemctl restart labmq-consumer || fail "systemctl restart labmq-consumer on $m"
  wait_inside "$m" 60 'systemctl is-active --quiet labmq-consumer' ||
    fail "labmq-consumer on $m is $(inside "$m" systemctl is-active labmq-consumer || true): $(prop "$m" labmq-consumer StatusText)"
}

setup_web() {
  install_debs web './labmq-web_*.deb'
  install_tls web labmq-web
  {
    echo 'listen = "0.0.0.0:8080"'
    amqp_toml web
  } | put web /etc/labmq/web.toml 644 root:root
  echo "LABMQ_WEB_AMQP_PASSWORD=$PASSWORD" | put web /etc/labmq/web.env 640 root:labmq-web
  inside web systemctl reset-failed labmq-web
  inside web systemctl restart labmq-web || fail "systemctl restart labmq-web"
  wait_inside web 60 "systemctl show -p StatusText --value labmq-web | grep -q 'storing results'" ||
    fail "labmq-web never connected to the cluster: $(prop web labmq-web StatusText)"
}

setup_client() {
  install_debs client './labmq-tools_*.deb'
  install_tls client root
  amqp_toml client | sed '$a amqp_password_file = "/etc/labmq/amqp-password"' |
    put client /etc/labmq/produce.toml 644 root:root
  printf '%s\n' "$PASSWORD" | put client /etc/labmq/amqp-password 600 root:root
}

# Runs the setup of every role at once; fails if any did.
setup_all() {
  local pids=() roles=(server consumer-1 consumer-2 web client) r i failed=()
  setup_server & pids+=($!)
  setup_consumer consumer-1 & pids+=($!)
  setup_consumer consumer-2 & pids+=($!)
  setup_web & pids+=($!)
  setup_client & pids+=($!)
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=("${roles[$i]}"); done
  [ ${#failed[@]} -eq 0 ] || fail "setting up ${failed[*]} failed (see above)"
  for r in server consumer-1 consumer-2 web; do
    local unit=labmq-${r%-[0-9]}
    say "$r: $(inside "$r" dpkg-query -W -f '${Package} ${Version}' "$unit"), $unit active, status: $(prop "$r" "$unit" StatusText)"
  done
}

