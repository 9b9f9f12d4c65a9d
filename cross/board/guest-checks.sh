#!/bin/bash
# Runs inside the booted board (started by board-checks.service; see board-test.sh): installs
# the Debian package with `apt-get install ./electra-edge_*_arm64.deb` and checks the service on
# the real systemd, then the package's life cycle (guest-package.sh: template instances, an
# upgrade under load, remove, purge). Prints one line per check on the console,
# "BOARD: CHECK <name>: PASS|FAIL <details>", then "BOARD: RESULT ...", and powers the
# machine off.
set -u

payload=/opt/electra-edge-board
sock=/run/electra-edge/electra-edge.sock
svc=electra-edge.service
sck=electra-edge.socket
t_start=$(date +%s)
fails=()

say() { echo "BOARD: $*"; }
pass() { say "CHECK $1: PASS $2"; }
fail() {
    say "CHECK $1: FAIL $2"
    fails+=("$1")
    # What systemd and the service said about it.
    journalctl -b -u "$svc" -u "$sck" -n 12 --no-pager -o short-monotonic 2>&1 | sed 's/^/BOARD:   | /'
    recover
}
finish() {
    if [ ${#fails[@]} -eq 0 ]; then say "RESULT PASS"; else say "RESULT FAIL: ${fails[*]}"; fi
    say "checks took $(( $(date +%s) - t_start )) s (guest clock), powering off"
    systemctl --no-block poweroff
}
trap finish EXIT

prop() { systemctl show --value -p "$2" "$1"; }
# Back to a known state after a failed check, so the next check tests its own point: a fresh
# socket (the old one may be broken) and a running service.
recover() {
    systemctl stop "$svc" "$sck" >/dev/null 2>&1
    systemctl reset-failed "$svc" "$sck" >/dev/null 2>&1
    systemctl start "$sck" "$svc" >/dev/null 2>&1
}
# One request on a new connection; prints the answer line. -t: wait for the answer after
# sending (the connection may be what starts the service).
request_to() { # SOCKET ID TEXT
    printf '{"id":%s,"text":"%s"}\n' "$2" "$3" | timeout 150 socat -t 120 - "UNIX-CONNECT:$1" 2>&1
}
request() { # ID TEXT
    request_to "$sock" "$1" "$2"
}
# Is ANSWER a result (not an error) for ID?
answered() { # ID ANSWER
    case "$2" in *'"error"'*) return 1 ;; *"\"id\":$1,"* | *"\"id\":$1}"*) return 0 ;; *) return 1 ;; esac
}
short() { printf '%s' "$1" | tr '\n' ' ' | cut -c1-"${2:-110}"; }
# Wait (up to SECONDS) until the service runs again with a main PID other than OLD.
wait_new_main() { # OLD SECONDS
    local i=0 pid
    while [ $i -lt "$2" ]; do
        pid="$(prop "$svc" MainPID)"
        if [ "$pid" != 0 ] && [ "$pid" != "$1" ] && [ "$(prop "$svc" ActiveState)" = active ] &&
            [ "$(prop "$svc" SubState)" = running ]; then
            return 0
        fi
        sleep 1
        i=$((i + 1))
    done
    return 1
}
secs() { # a time span as `systemctl show` prints it ("30s", "1min 30s", "500ms") -> whole seconds
    local total=0 w
    for w in $1; do
        case "$w" in
            *ms | *us | *μs) ;;
            *min) total=$((total + ${w%min} * 60)) ;;
            *h) total=$((total + ${w%h} * 3600)) ;;
            *s) total=$((total + ${w%s})) ;;
            *[!0-9]*) ;;
            *) total=$((total + w / 1000000)) ;;
        esac
    done
    echo "$total"
}

state="$(systemctl is-system-running --wait 2>&1)"
say "booted: system $state; $(systemd-analyze time 2>/dev/null | head -n1)"
say "$(systemctl --version | head -n1); kernel $(uname -r); $(nproc) CPUs; $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"
if [ "$state" != running ]; then
    systemctl --failed --no-legend --plain --no-pager | sed 's/^/BOARD:   failed unit: /'
fi

# --- Install: the package, as a board owner would. It enables and starts the socket only; the
# first connection starts the service.
name=package-install
deb="$(ls "$payload"/deb/electra-edge_*_arm64.deb | head -n1)"
t=$(date +%s)
out="$(cd "$payload/deb" && DEBIAN_FRONTEND=noninteractive apt-get install -y \
    "./$(basename "$deb")" 2>&1)"
rc=$?
took=$(( $(date +%s) - t ))
printf '%s\n' "$out" | grep -v -e '^Reading' -e '^(Reading' -e '^Building' -e '^Note, selecting' |
    tail -n 6 | sed 's/^/BOARD:   apt: /'
# What the package installed (for the remove and purge checks).
dpkg-query -L electra-edge 2>/dev/null > /run/electra-edge-board.files || true
version="$(dpkg-query -W -f='${Version}' electra-edge 2>/dev/null || true)"
if [ $rc -ne 0 ]; then
    fail $name "apt-get install ./$(basename "$deb") exited $rc"
elif [ "$(dpkg-query -W -f='${Status}' electra-edge)" != "install ok installed" ]; then
    fail $name "dpkg says '$(dpkg-query -W -f='${Status}' electra-edge)'"
elif [ "$(systemctl is-enabled $sck)/$(prop $sck SubState)" != enabled/listening ]; then
    fail $name "the socket is $(systemctl is-enabled $sck)/$(prop $sck SubState), not enabled/listening"
elif [ "$(prop $svc ActiveState)" != inactive ]; then
    fail $name "the service is $(prop $svc ActiveState) before any connection (the socket should start it)"
elif [ ! -f /etc/default/electra-edge ] || ! grep -qx /etc/default/electra-edge /var/lib/dpkg/info/electra-edge.conffiles; then
    fail $name "no conffile /etc/default/electra-edge"
elif [ "$(readlink /var/lib/electra-edge/models/demo)" != /usr/share/electra-edge/models/demo ]; then
    fail $name "/var/lib/electra-edge/models/demo is not the link to the demo model"
else
    pass $name "electra-edge $version installed in ${took} s ($(grep -c . /run/electra-edge-board.files) paths); socket enabled and listening, service inactive, conffile /etc/default/electra-edge, Depends: $(dpkg-query -W -f='${Depends}' electra-edge)"
fi
say "glibc $(ldd --version | head -n1 | grep -o '[0-9.]*$'); /usr/bin/electra-edge needs GLIBC_$(grep -ao 'GLIBC_2\.[0-9]*' /usr/bin/electra-edge | sort -u -V | tail -n1 | cut -d_ -f2)"

# 1. socket activation from cold
name=socket-activation
before="$(prop "$svc" ActiveState)"
sock_state="$(prop "$sck" SubState)"
t=$(date +%s)
ans="$(request 1 '我爱北京天安门')"
took=$(( $(date +%s) - t ))
after="$(prop "$svc" ActiveState)"
if [ "$before" != inactive ]; then
    fail $name "the service was $before before the first connection (expected inactive)"
elif [ "$sock_state" != listening ]; then
    fail $name "the socket unit was $sock_state, not listening"
elif ! answered 1 "$ans"; then
    fail $name "no answer to the first connection: $(short "$ans")"
elif [ "$after" != active ]; then
    fail $name "answered, but the service is $after"
else
    pass $name "service inactive -> first connection started it through the socket -> answered in ${took} s: $(short "$ans" 70)"
fi

# 2. STATUS line
name=status
pid="$(prop "$svc" MainPID)"
status="$(prop "$svc" StatusText)"
# The budget the service logged (journal) must be the one in the STATUS it sent.
budget="$(journalctl -b _PID="$pid" -o cat --no-pager 2>/dev/null | grep -m1 '^memory budget' || true)"
if [ "$(prop "$svc" ActiveState)/$(prop "$svc" SubState)" != active/running ]; then
    fail $name "service is $(prop "$svc" ActiveState)/$(prop "$svc" SubState)"
else
    case "$status" in
        "serving /usr/share/electra-edge/models/demo "*)
            if [ -n "$budget" ] && [ "${status%"$budget"}" = "$status" ]; then
                fail $name "STATUS '$status' does not end with the logged '$budget'"
            else
                pass $name "active/running, STATUS=$(short "$status" 90)"
            fi ;;
        *) fail $name "active, but StatusText is '$status' (expected 'serving /usr/share/electra-edge/models/demo ...')" ;;
    esac
fi
mib() { local v; v="$(prop "$svc" "$1")"; case "$v" in '' | *[!0-9]*) echo "$v" ;; *) echo "$((v / 1048576)) MiB" ;; esac; }
say "memory: MemoryCurrent $(mib MemoryCurrent), MemoryMax $(mib MemoryMax)"

# 3. SIGKILL -> restart
name=sigkill-restart
old="$(prop "$svc" MainPID)"
n0="$(prop "$svc" NRestarts)"
t=$(date +%s)
kill -KILL "$old"
if ! wait_new_main "$old" 180; then
    fail $name "no new main process 180 s after SIGKILL of $old"
else
    took=$(( $(date +%s) - t ))
    ans="$(request 3 '今天天气很好')"
    n1="$(prop "$svc" NRestarts)"
    if ! answered 3 "$ans"; then
        fail $name "restarted (pid $old -> $(prop "$svc" MainPID)), but no answer: $(short "$ans")"
    elif [ "$n1" != $((n0 + 1)) ]; then
        fail $name "answered, but NRestarts went $n0 -> $n1 (expected one restart)"
    else
        pass $name "pid $old killed -> restarted by systemd as $(prop "$svc" MainPID) in ${took} s (NRestarts $n0 -> $n1), answered"
    fi
fi

# 4. watchdog: a stopped main process stops its pings
name=watchdog
old="$(prop "$svc" MainPID)"
n0="$(prop "$svc" NRestarts)"
wd="$(secs "$(prop "$svc" WatchdogUSec)")"
abort="$(secs "$(prop "$svc" TimeoutAbortUSec)")"
since="$(date '+%Y-%m-%d %H:%M:%S')"
t=$(date +%s)
kill -STOP "$old"
limit=$(( wd + abort + 180 ))
if [ "$wd" -le 0 ]; then
    kill -CONT "$old"
    fail $name "WatchdogSec is not set on the service"
elif ! wait_new_main "$old" "$limit"; then
    kill -CONT "$old" 2>/dev/null
    fail $name "pid $old still the main process $limit s after SIGSTOP (WatchdogSec=$wd)"
else
    took=$(( $(date +%s) - t ))
    timeout_line="$(journalctl -b -u "$svc" --since "$since" -o cat --no-pager | grep -m1 -i 'watchdog timeout' || true)"
    ans="$(request 4 '我爱北京天安门')"
    n1="$(prop "$svc" NRestarts)"
    if [ -z "$timeout_line" ]; then
        fail $name "pid $old replaced after ${took} s, but the journal has no 'Watchdog timeout' for it"
    elif [ "$took" -lt $(( wd / 2 )) ]; then
        fail $name "pid $old replaced after ${took} s, sooner than the watchdog could fire (WatchdogSec=$wd)"
    elif ! answered 4 "$ans"; then
        fail $name "restarted after the watchdog, but no answer: $(short "$ans")"
    elif [ "$n1" != $((n0 + 1)) ]; then
        fail $name "answered, but NRestarts went $n0 -> $n1"
    else
        pass $name "SIGSTOP pid $old -> '$timeout_line' -> killed and restarted as $(prop "$svc" MainPID) ${took} s after the SIGSTOP, answered"
    fi
fi

# 5. systemctl restart during a client loop
name=restart-under-load
n=30
at=6
dir="$(mktemp -d)"
(
    for i in $(seq 1 $n); do
        a=$(date +%s%N)
        ans="$(request $((100 + i)) "第${i}个请求")"
        b=$(date +%s%N)
        printf '%s\t%s\t%s\n' "$((100 + i))" "$(( (b - a) / 1000000 ))" "$ans" >> "$dir/answers"
    done
) &
loop=$!
for _ in $(seq 1 600); do
    [ "$(wc -l < "$dir/answers" 2>/dev/null || echo 0)" -ge $at ] && break
    kill -0 $loop 2>/dev/null || break
    sleep 0.1
done
old="$(prop "$svc" MainPID)"
# One more client connects before the restart and sends its line only once the old instance is
# stopping (it has accepted the connection and got SIGTERM): it must still be answered.
(
    while [ "$(prop "$svc" ActiveState)" = active ] && [ "$(prop "$svc" MainPID)" = "$old" ]; do
        sleep 0.05
    done
    printf '{"id":199,"text":"%s"}\n' '重启时连上的请求'
) | timeout 150 socat -t 120 - "UNIX-CONNECT:$sock" > "$dir/late" 2>&1 &
late=$!
sleep 0.5
done_before="$(wc -l < "$dir/answers" 2>/dev/null || echo 0)"
t=$(date +%s%N)
systemctl restart "$svc"
restart_ms=$(( ($(date +%s%N) - t) / 1000000 ))
wait $loop
wait $late || true
late_ans="$(cat "$dir/late")"
ok=0
bad=""
while IFS=$'\t' read -r id ms ans; do
    if answered "$id" "$ans"; then ok=$((ok + 1)); else bad="${bad:-$id: $(short "$ans" 80)}"; fi
done < "$dir/answers"
max_ms="$(cut -f2 "$dir/answers" | sort -n | tail -n1)"
new="$(prop "$svc" MainPID)"
rm -rf "$dir"
if [ "$done_before" -ge $n ]; then
    fail $name "the loop ended before the restart: make it longer"
elif [ "$new" = "$old" ]; then
    fail $name "the main PID did not change ($old): no restart happened"
elif [ $ok -ne $n ]; then
    fail $name "$ok of $n requests answered (restart after $done_before); first unanswered: $bad"
elif ! answered 199 "$late_ans"; then
    fail $name "the loop's $n answered, but not the connection made before the restart whose line came once the old instance was stopping: $(short "$late_ans")"
else
    pass $name "$n of $n answered, and the connection made before the restart whose line came once the old instance was stopping; systemctl restart after request $done_before took ${restart_ms} ms (pid $old -> $new); slowest request ${max_ms} ms"
fi

# 6. stop the service: the socket stays and starts it again
name=stop-then-connect
systemctl stop "$svc"
sleep 1
sstate="$(prop "$sck" ActiveState)/$(prop "$sck" SubState)"
vstate="$(prop "$svc" ActiveState)"
if [ "$sstate" != active/listening ] || [ ! -S "$sock" ]; then
    fail $name "after 'systemctl stop $svc' the socket unit is $sstate ($(prop "$sck" Result)), socket file $([ -S "$sock" ] && echo present || echo missing)"
else
    ans="$(request 6 '北京欢迎你')"
    if ! answered 6 "$ans"; then
        fail $name "socket listening, service $vstate, but no answer: $(short "$ans")"
    elif [ "$(prop "$svc" ActiveState)" != active ]; then
        fail $name "answered, but the service is $(prop "$svc" ActiveState)"
    else
        pass $name "service $vstate, socket $sstate -> the connection started the service again and was answered"
    fi
fi

# 7. systemd-analyze security
name=security
line="$(systemd-analyze security --no-pager "$svc" 2>&1 | grep -i 'overall exposure level' || true)"
score="$(printf '%s' "$line" | grep -o '[0-9][0-9.]*' | tail -n1)"
if [ -z "$score" ]; then
    fail $name "no exposure level from systemd-analyze security: $(short "$line")"
elif awk -v s="$score" 'BEGIN { exit !(s <= 1.4) }'; then
    pass $name "exposure $score <= 1.4 ($(short "${line#*: }" 40))"
else
    fail $name "exposure $score > 1.4: $(short "$line")"
fi

# 8. journal: each line of the service once, stamped by journald only
name=journal
raw="$(journalctl -b _SYSTEMD_UNIT="$svc" -o short-monotonic --no-pager | grep -v '^-- ')"
lines="$(printf '%s\n' "$raw" | sed -E 's/^\[ *[0-9.]+\] [^ ]+ //')"
total="$(printf '%s\n' "$lines" | grep -c . || true)"
pids="$(printf '%s\n' "$lines" | grep -o '^[^:]*\[[0-9]*\]' | sort -u | wc -l)"
# Doubled logging (a line written to two channels) doubles every line, also those a process
# writes exactly once: its self-check and its memory budget. (A warning repeated by a loop is
# not a doubled line, so repeated lines in general are not counted.)
once="$(printf '%s\n' "$lines" | grep -E 'self-check passed|memory budget' |
    sed -E 's/^([^:]*\[[0-9]+\]): .*(self-check passed|memory budget).*/\1 \2/')"
dups="$(printf '%s\n' "$once" | grep . | sort | uniq -d | head -n3)"
stamped="$(printf '%s\n' "$lines" | grep -E '^[^:]*: \[?[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}' | head -n3)"
if [ "$total" -eq 0 ]; then
    fail $name "no lines of $svc in the journal"
elif [ -n "$stamped" ]; then
    fail $name "lines carry their own timestamp besides journald's: $(short "$stamped" 200)"
elif [ -z "$once" ]; then
    fail $name "no self-check or memory budget line of $svc in the journal"
elif [ -n "$dups" ]; then
    fail $name "doubled lines (once per process, found twice): $(short "$dups" 200)"
else
    pass $name "$total lines from $pids processes; self-check and budget lines once per process ($(printf '%s\n' "$once" | grep -c .) in all); no timestamps of their own"
fi

# --- The package's life cycle: instances, upgrade under load, remove, purge.
# shellcheck source=cross/board/guest-package.sh
. "$payload/guest-package.sh"
