#!/usr/bin/env bash
# A throw-away ActiveMQ 5.x broker for the MOSIP ABIS adapter's tests and local set-ups, run as a
# plain process (not the system service), loopback only, its data in DIR.
#
#   scripts/activemq.sh start DIR [STOMP_PORT]   generate DIR/activemq.xml (persistent KahaDB in
#                                                DIR/data, STOMP on 127.0.0.1:STOMP_PORT — a free
#                                                port when not given —, no OpenWire, no web
#                                                console, no JMX), start the broker, wait until
#                                                it accepts STOMP connections; prints the port
#   scripts/activemq.sh stop DIR                 stop it (SIGTERM, then SIGKILL after 30 s)
#
# Needs the Debian package `activemq` and a JRE (scripts/setup.sh installs both). The broker's
# log is DIR/activemq.log, its pid DIR/activemq.pid, its port DIR/stomp.port.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

usage() {
  echo "usage: $0 start DIR [STOMP_PORT] | stop DIR" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
home=${ACTIVEMQ_HOME:-/usr/share/activemq}

start() {
  local port=${1:-}
  [ -f "$home/bin/activemq.jar" ] || {
    echo "activemq.sh: $home/bin/activemq.jar not found: run scripts/setup.sh (Debian package activemq)" >&2
    exit 1
  }
  command -v java >/dev/null || {
    echo "activemq.sh: no java: run scripts/setup.sh (a headless JRE)" >&2
    exit 1
  }
  mkdir -p "$dir/data" "$dir/tmp"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/activemq.pid" ] && kill -0 "$(cat "$dir/activemq.pid")" 2>/dev/null; then
    echo "activemq.sh: a broker already runs from $dir (pid $(cat "$dir/activemq.pid"))" >&2
    exit 1
  fi
  [ -n "$port" ] || port=$(free_port)
  cat >"$dir/activemq.xml" <<XML
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
         http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="biomatch-test" useJmx="false"
          persistent="true" dataDirectory="$dir/data" schedulerSupport="false" advisorySupport="false">
    <persistenceAdapter>
      <kahaDB directory="$dir/data/kahadb"/>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="1 gb"/></storeUsage>
        <tempUsage><tempUsage limit="256 mb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:$port?transport.closeAsync=false"/>
    </transportConnectors>
  </broker>
</beans>
XML
  echo "$port" >"$dir/stomp.port"
  # The classpath the Debian launcher builds: the jars in lib/ (and lib/optional for Spring).
  java -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.io.tmpdir="$dir/tmp" \
    -Dactivemq.classpath="$dir" \
    -Dactivemq.home="$home" -Dactivemq.base="$dir" -Dactivemq.conf="$dir" -Dactivemq.data="$dir/data" \
    -jar "$home/bin/activemq.jar" start "xbean:file:$dir/activemq.xml" >"$dir/activemq.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/activemq.pid"
  # Up when it answers a STOMP CONNECT with CONNECTED (the connector is bound late in start-up).
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "activemq.sh: the broker exited during start-up; its log:" >&2
      tail -n 40 "$dir/activemq.log" >&2
      exit 1
    fi
    if python3 - "$port" <<'PY' 2>/dev/null; then
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
s.settimeout(2)
ok = s.recv(9) == b"CONNECTED"
s.sendall(b"DISCONNECT\n\n\0")
s.close()
sys.exit(0 if ok else 1)
PY
      echo "$port"
      return 0
    fi
    sleep 0.1
  done
  echo "activemq.sh: the broker did not accept STOMP connections on 127.0.0.1:$port within 60 s" >&2
  stop_pid activemq.sh "$pid"
  exit 1
}

stop() {
  [ -f "$dir/activemq.pid" ] || return 0
  local pid
  pid=$(cat "$dir/activemq.pid")
  # Not our child here (another invocation started it): stop_pid polls until it is gone (its
  # final wait is a no-op for a non-child).
  stop_pid activemq.sh "$pid"
  rm -f "$dir/activemq.pid"
}

case $cmd in
  start) start "${3:-}" ;;
  stop) stop ;;
  *) usage ;;
esac
