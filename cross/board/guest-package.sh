# Sourced by guest-checks.sh (its helpers: say, pass, fail, prop, request_to, answered, short)
# once the package is installed and the service checks ran: the package's life cycle as a board
# owner lives it.
#   instances           two template instances, electra-edge@demo (the packaged demo model) and
#                       electra-edge@second (the payload's second model, linked into
#                       /var/lib/electra-edge/models), each answering with its own model
#   reload-under-load   (when the binary implements reload) an instance's model link switched
#                       and `systemctl reload` while clients keep connecting: every request
#                       answered by one model or the other, the new one after the reload, no
#                       restart; a broken folder keeps the model serving, STATUS says why
#   upgrade-under-load  apt-get install of a newer version of the package while clients keep
#                       connecting to the default socket and an instance's: every request
#                       answered, the running services restarted onto the new binary, the
#                       sockets never restarted, the edited conffile kept
#   remove              apt-get remove: nothing of the package running or listening, no file of
#                       it left but the conffile
#   purge               apt-get purge: nothing left (files, state, caches, enable symlinks)

# The answer MODEL-DIR gives to one request, from the CLI (`electra-edge run`, the same binary
# and the same JSON lines contract).
cli_answer() { # MODEL-DIR ID TEXT
    printf '{"id":%s,"text":"%s"}\n' "$2" "$3" | /usr/bin/electra-edge run --model "$1" 2>/dev/null
}
# Processes whose command is electra-edge (there is no pgrep in the image).
ee_pids() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = electra-edge ] && echo "${p#/proc/}"
    done
    true
}

# Clients on new connections, one after the other, until DIR/stop exists (at most 400 each):
# lines "SOCKET-TAG<TAB>ID<TAB>ANSWER" in DIR/answers.TAG.
load_loop() { # SOCKET TAG DIR FIRST-ID
    local i=0 id ans
    while [ ! -e "$3/stop" ] && [ $i -lt 400 ]; do
        i=$((i + 1))
        id=$(($4 + i))
        ans="$(request_to "$1" "$id" "第${i}个请求")"
        printf '%s\t%s\t%s\n' "$2" "$id" "$ans" >> "$3/answers.$2"
    done
}
answers_in() { cat "$1"/answers.* 2>/dev/null | grep -c . || true; }
wait_answers() { # DIR AT-LEAST SECONDS
    local i=0
    while [ "$(answers_in "$1")" -lt "$2" ] && [ $i -lt $(($3 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
}
tally() { # DIR -> "OK TOTAL FIRST-BAD"
    local ok=0 total=0 bad="" tag id ans
    while IFS=$'\t' read -r tag id ans; do
        total=$((total + 1))
        if answered "$id" "$ans"; then ok=$((ok + 1)); else bad="${bad:-$tag $id: $(short "$ans" 80)}"; fi
    done < <(cat "$1"/answers.* 2>/dev/null)
    echo "$ok $total $bad"
}

models=/var/lib/electra-edge/models
text='我爱北京天安门'

# 9. two template instances, each with its own model
name=instances
ln -sfn "$payload/second" "$models/second"
out="$(systemctl enable --now electra-edge@demo.socket electra-edge@second.socket 2>&1)" ||
    say "enable --now failed: $(short "$out" 200)"
ref_demo="$(cli_answer /usr/share/electra-edge/models/demo 901 "$text")"
ref_second="$(cli_answer "$payload/second" 901 "$text")"
ans_demo="$(request_to /run/electra-edge/demo.sock 901 "$text")"
ans_second="$(request_to /run/electra-edge/second.sock 901 "$text")"
st_demo="$(prop electra-edge@demo.service StatusText)"
st_second="$(prop electra-edge@second.service StatusText)"
if [ -z "$ref_demo" ] || [ -z "$ref_second" ]; then
    fail $name "no reference answer from electra-edge run (demo: $(short "$ref_demo" 60); second: $(short "$ref_second" 60))"
elif [ "$ref_demo" = "$ref_second" ]; then
    fail $name "the two models give the same answer: the check could not tell them apart"
elif [ "$ans_demo" != "$ref_demo" ]; then
    fail $name "electra-edge@demo answered '$(short "$ans_demo" 100)', the demo model gives '$(short "$ref_demo" 100)'"
elif [ "$ans_second" != "$ref_second" ]; then
    fail $name "electra-edge@second answered '$(short "$ans_second" 100)', its model gives '$(short "$ref_second" 100)'"
elif [ "${st_demo#"serving $models/demo "}" = "$st_demo" ] || [ "${st_second#"serving $models/second "}" = "$st_second" ]; then
    fail $name "STATUS does not name the instance's model folder: '$(short "$st_demo" 60)', '$(short "$st_second" 60)'"
else
    pass $name "electra-edge@demo and @second on /run/electra-edge/{demo,second}.sock, each answer equal to its own model's through electra-edge run and different from the other's: $(short "$ans_demo" 60) / $(short "$ans_second" 60)"
fi

# 10. systemctl reload under load (when the binary implements it: board-test.sh then requires
# this check and puts expect-reload in the payload)
if [ -e "$payload/expect-reload" ]; then
    name=reload-under-load
    live="$models/live"
    ln -sfn /usr/share/electra-edge/models/demo "$live"
    systemctl start electra-edge@live.socket
    ref_new="$(cli_answer "$payload/second" 0 "$text")"
    first="$(request_to /run/electra-edge/live.sock 960 "$text")"
    pid0="$(prop electra-edge@live.service MainPID)"
    n0="$(prop electra-edge@live.service NRestarts)"
    dir="$(mktemp -d)"
    load_loop /run/electra-edge/live.sock a "$dir" 4000 &
    l1=$!
    load_loop /run/electra-edge/live.sock b "$dir" 5000 &
    l2=$!
    wait_answers "$dir" 6 120
    ln -sfn "$payload/second" "$live"
    t=$(date +%s)
    reload_out="$(systemctl reload electra-edge@live.service 2>&1)" || reload_out="systemctl reload failed: $reload_out"
    # Done when a new connection is answered by the other model.
    swapped=""
    for _ in $(seq 1 180); do
        probe="$(request_to /run/electra-edge/live.sock 0 "$text")"
        if [ "$probe" = "$ref_new" ]; then swapped=$(( $(date +%s) - t )); break; fi
        sleep 1
    done
    at_swap="$(answers_in "$dir")"
    wait_answers "$dir" $((at_swap + 6)) 120
    touch "$dir/stop"
    wait $l1 $l2
    read -r ok total bad < <(tally "$dir")
    # Every answer is one model's or the other's (task discriminator or classify), and the
    # last one of each loop is the new model's.
    other="$(cut -f3 "$dir"/answers.* | grep -v -c -e '"task":"discriminator"' -e '"task":"classify"' || true)"
    last_a="$(tail -n1 "$dir/answers.a" | cut -f3)"
    last_b="$(tail -n1 "$dir/answers.b" | cut -f3)"
    rm -rf "$dir"
    pid1="$(prop electra-edge@live.service MainPID)"
    n1="$(prop electra-edge@live.service NRestarts)"
    # A folder that fails to load: the model in use keeps answering, STATUS says why.
    broken="$(mktemp -d /var/lib/electra-edge/broken.XXXXXX)"
    chmod 0755 "$broken"
    ln -sfn "$broken" "$live"
    systemctl reload electra-edge@live.service
    st=""
    for _ in $(seq 1 120); do
        st="$(prop electra-edge@live.service StatusText)"
        case "$st" in *fail*) break ;; esac
        sleep 1
    done
    after_broken="$(request_to /run/electra-edge/live.sock 0 "$text")"
    errors="$(journalctl -u electra-edge@live.service -p err -o cat --no-pager | grep -c 'reload' || true)"
    # What the instance and systemd said, shown when the check fails.
    live_log="$(journalctl -b -u electra-edge@live.service -u electra-edge@live.socket -n 25 --no-pager -o short-monotonic 2>&1)"
    systemctl stop electra-edge@live.socket electra-edge@live.service
    rm -f "$live"
    rmdir "$broken"
    case "$first" in *'"task":"discriminator"'*) first_ok=1 ;; *) first_ok=0 ;; esac
    if [ "$first_ok" != 1 ]; then
        fail $name "electra-edge@live did not answer with the demo model first: $(short "$first" 100)"
    elif [ -z "$swapped" ]; then
        fail $name "no answer from the switched folder's model within 180 probes after systemctl reload; the last: $(short "$probe" 100)${reload_out:+; $(short "$reload_out" 200)}"
    elif [ "$ok" -ne "$total" ] || [ "$other" != 0 ]; then
        fail $name "$ok of $total requests answered during the reload ($other answered by neither model); first unanswered: $bad"
    elif [ "${last_a#*\"task\":\"classify\"}" = "$last_a" ] || [ "${last_b#*\"task\":\"classify\"}" = "$last_b" ]; then
        fail $name "after the reload a client loop still got the old model's answers"
    elif [ "$pid1" != "$pid0" ] || [ "$n1" != "$n0" ]; then
        fail $name "the service restarted (pid $pid0 -> $pid1, NRestarts $n0 -> $n1): a reload must not"
    elif [ "$after_broken" != "$ref_new" ]; then
        fail $name "after a reload of a broken folder the answer is not the serving model's: $(short "$after_broken" 100)"
    elif [ "${st#*fail}" = "$st" ] || [ "$errors" -lt 1 ]; then
        fail $name "a broken folder's reload: STATUS '$(short "$st" 100)', $errors error lines in the journal"
    else
        pass $name "link switched demo -> second and systemctl reload under 2 client loops: $ok of $total answered, each by one model or the other, the new one ${swapped} s after the reload, same pid $pid0, no restart; a broken folder kept the model serving (STATUS: $(short "$st" 80))"
    fi
    case " ${fails[*]} " in *" $name "*) printf '%s\n' "$live_log" | sed 's/^/BOARD:   @live | /' ;; esac
fi

# 11. upgrade under load
name=upgrade-under-load
new_deb="$(ls "$payload"/deb/upgrade/electra-edge_*_arm64.deb | head -n1)"
old_version="$(dpkg-query -W -f='${Version}' electra-edge)"
printf '# kept across upgrades (board test)\n' >> /etc/default/electra-edge
conf_sum="$(md5sum < /etc/default/electra-edge)"
dir="$(mktemp -d)"
request 950 "$text" > /dev/null # the default service runs (the upgrade restarts what runs)
old_main="$(prop electra-edge.service MainPID)"
old_inst="$(prop electra-edge@second.service MainPID)"
sock_since="$(prop electra-edge.socket ActiveEnterTimestampMonotonic)"
inst_sock_since="$(prop electra-edge@second.socket ActiveEnterTimestampMonotonic)"
sock_inode="$(stat -c %i /run/electra-edge/electra-edge.sock)"
load_loop /run/electra-edge/electra-edge.sock default "$dir" 1000 &
l1=$!
load_loop /run/electra-edge/electra-edge.sock default2 "$dir" 2000 &
l2=$!
load_loop /run/electra-edge/second.sock second "$dir" 3000 &
l3=$!
wait_answers "$dir" 6 120
before="$(answers_in "$dir")"
t=$(date +%s%N)
out="$(cd "$(dirname "$new_deb")" && DEBIAN_FRONTEND=noninteractive apt-get install -y \
    "./$(basename "$new_deb")" 2>&1)"
rc=$?
upgrade_ms=$(( ($(date +%s%N) - t) / 1000000 ))
after_upgrade="$(answers_in "$dir")"
# Let the new services answer a few too, then stop the clients.
wait_answers "$dir" $((after_upgrade + 6)) 120
touch "$dir/stop"
wait $l1 $l2 $l3
read -r ok total bad < <(tally "$dir")
new_version="$(dpkg-query -W -f='${Version}' electra-edge)"
new_main="$(prop electra-edge.service MainPID)"
new_inst="$(prop electra-edge@second.service MainPID)"
exe="$(readlink "/proc/$new_main/exe" 2>/dev/null)"
rm -rf "$dir"
if [ $rc -ne 0 ]; then
    printf '%s\n' "$out" | tail -n 8 | sed 's/^/BOARD:   apt: /'
    fail $name "apt-get install ./$(basename "$new_deb") exited $rc"
elif ! dpkg --compare-versions "$new_version" gt "$old_version"; then
    fail $name "the version went $old_version -> $new_version"
elif [ "$ok" -ne "$total" ]; then
    fail $name "$ok of $total requests answered during the upgrade; first unanswered: $bad"
elif [ "$new_main" = "$old_main" ] || [ "$new_main" = 0 ] || [ "$exe" != /usr/bin/electra-edge ]; then
    fail $name "the default service was not restarted onto the new binary (pid $old_main -> $new_main, exe '$exe')"
elif [ "$new_inst" = "$old_inst" ] || [ "$new_inst" = 0 ]; then
    fail $name "the instance electra-edge@second was not restarted (pid $old_inst -> $new_inst)"
elif [ "$(prop electra-edge.socket ActiveEnterTimestampMonotonic)" != "$sock_since" ] ||
    [ "$(prop electra-edge@second.socket ActiveEnterTimestampMonotonic)" != "$inst_sock_since" ] ||
    [ "$(stat -c %i /run/electra-edge/electra-edge.sock)" != "$sock_inode" ]; then
    fail $name "a socket was restarted by the upgrade (it must keep listening)"
elif [ "$(md5sum < /etc/default/electra-edge)" != "$conf_sum" ] || ls /etc/default/electra-edge.dpkg-* >/dev/null 2>&1; then
    fail $name "the edited conffile /etc/default/electra-edge was not kept as it was"
else
    pass $name "$old_version -> $new_version in ${upgrade_ms} ms under 3 client loops: $ok of $total requests answered ($before before, $((total - after_upgrade)) after); services restarted onto the new binary (pid $old_main -> $new_main, @second $old_inst -> $new_inst), sockets kept listening, edited conffile kept"
fi

# 12. remove
name=remove
out="$(DEBIAN_FRONTEND=noninteractive apt-get remove -y electra-edge 2>&1)"
rc=$?
sleep 1
left=()
while IFS= read -r f; do
    [ "$f" = /etc/default/electra-edge ] && continue
    # Files and links; directories are shared (/lib is a link to usr/lib on Debian 12).
    if [ ! -d "$f" ] && { [ -f "$f" ] || [ -L "$f" ]; }; then left+=("$f"); fi
done < /run/electra-edge-board.files
pids="$(ee_pids | tr '\n' ' ')"
active="$(systemctl list-units --all --plain --no-legend 'electra-edge*' 2>/dev/null |
    awk '$3 == "active" || $3 == "activating" || $3 == "reloading" {print $1}' | tr '\n' ' ')"
socks="$(ls /run/electra-edge/*.sock 2>/dev/null | tr '\n' ' ')"
status="$(dpkg-query -W -f='${Status}' electra-edge 2>/dev/null)"
if [ $rc -ne 0 ]; then
    printf '%s\n' "$out" | tail -n 8 | sed 's/^/BOARD:   apt: /'
    fail $name "apt-get remove exited $rc"
elif [ -n "$pids$active$socks" ]; then
    fail $name "still running or listening after remove: processes [$pids] units [$active] sockets [$socks]"
elif [ ${#left[@]} -gt 0 ]; then
    fail $name "files of the package left after remove: $(short "${left[*]}" 200)"
elif [ ! -f /etc/default/electra-edge ] || [ "$status" != "deinstall ok config-files" ]; then
    fail $name "the conffile is $([ -f /etc/default/electra-edge ] && echo present || echo gone), dpkg says '$status'"
else
    pass $name "nothing running or listening (no electra-edge process, no active unit, no socket file); of the package's files only the conffile /etc/default/electra-edge is left (dpkg: $status)"
fi

# 13. purge
name=purge
out="$(DEBIAN_FRONTEND=noninteractive apt-get purge -y electra-edge 2>&1)"
rc=$?
left=()
while IFS= read -r f; do
    case "$f" in *electra-edge*) ;; *) continue ;; esac
    if [ -e "$f" ] || [ -L "$f" ]; then left+=("$f"); fi
done < /run/electra-edge-board.files
for f in /var/lib/electra-edge /etc/default/electra-edge $(find /var/cache /etc/systemd/system \
    /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
    -maxdepth 3 -name '*electra-edge*' 2>/dev/null); do
    if [ -e "$f" ] || [ -L "$f" ]; then left+=("$f"); fi
done
pids="$(ee_pids | tr '\n' ' ')"
status="$(dpkg-query -W -f='${Status}' electra-edge 2>/dev/null || true)"
if [ $rc -ne 0 ]; then
    printf '%s\n' "$out" | tail -n 8 | sed 's/^/BOARD:   apt: /'
    fail $name "apt-get purge exited $rc"
elif [ -n "$pids" ]; then
    fail $name "electra-edge processes after purge: $pids"
elif [ ${#left[@]} -gt 0 ]; then
    fail $name "left after purge: $(short "${left[*]}" 240)"
elif [ -n "$status" ] && [ "$status" != "unknown ok not-installed" ]; then
    fail $name "dpkg still knows the package: '$status'"
else
    pass $name "nothing left: no file of the package, no conffile, no /var/lib/electra-edge, no caches in /var/cache, no unit symlinks or deb-systemd-helper state, no process"
fi
