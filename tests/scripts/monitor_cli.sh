#!/usr/bin/env bash
# `mome monitor` against tests/python/fake_publisher.py, a stand-in for a run's ZeroMQ stream (docs/monitoring.md):
# a monitor started before the run waits for it; plain records; --json passes messages through unchanged;
# malformed messages are skipped with a warning; a run that stops and restarts on a new endpoint is followed;
# exit codes for completed, failed and --timeout; CURVE keys from --keygen; the terminal view under a pty.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
if ! "$MOME_BIN" monitor --help > /dev/null 2>&1; then
  echo "SKIP: $MOME_BIN has no monitor verb"
  exit 0
fi
"$PYTHON" -c 'import zmq' 2>/dev/null || fail "pyzmq is missing (launch/install-deps test installs python3-zmq)"

# Every background process runs under timeout and is killed when the script exits, whatever happens.
bg_pids=()
cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${bg_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

publisher=("$PYTHON" "$MOME_SOURCE_DIR/tests/python/fake_publisher.py")
pub() { timeout 60 "${publisher[@]}" "$@"; }
# pub_bg LOG args...: a publisher in the background; its pid in pub_pid.
pub_bg() {
  local log=$1; shift
  timeout 60 "${publisher[@]}" "$@" > "$log" 2>&1 &
  pub_pid=$!
  bg_pids+=("$pub_pid")
}
# monitor_bg NAME args...: `mome monitor` in the background, stdout NAME.out, stderr NAME.err; its pid in mon_pid.
monitor_bg() {
  local name=$1; shift
  timeout 60 "$MOME_BIN" monitor "$@" > "$name.out" 2> "$name.err" &
  mon_pid=$!
  bg_pids+=("$mon_pid")
}
# wait_rc PID: its exit status into rc, without tripping set -e (not in $(...): a subshell cannot wait for it).
wait_rc() { rc=0; wait "$1" || rc=$?; }
# wait_file PATH: until a publisher has written it (10 s at most).
wait_file() {
  for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done
  fail "$1 did not appear"
}
json_field() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
show() { local f; for f in "$@"; do echo "== $f"; cat "$f"; done; }

# ---- usage ----
"$MOME_BIN" monitor --help | grep -q "usage: mome monitor" || fail "mome monitor --help"
for bad in "" "--frobnicate runs/x" "--timeout soon runs/x" "--timeout -1 runs/x" "--server-key nokey runs/x" \
           "--json --plain runs/x" "runs/x runs/y" "--keygen"; do
  rc=0; "$MOME_BIN" monitor $bad > usage.out 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { cat usage.out; fail "mome monitor $bad: expected exit 2, got $rc"; }
  grep -q "usage: mome monitor" usage.out || { cat usage.out; fail "mome monitor $bad: no usage"; }
done
pass "usage: --help, and exit 2 with the usage on bad options"

# ---- (1) started before the run exists; (2) plain records ----
monitor_bg early runs/early
sleep 1
kill -0 "$mon_pid" 2>/dev/null || { show early.out early.err; fail "the monitor did not wait for the run"; }
grep -q "waiting for runs/early/monitor.json" early.err || { show early.err; fail "no waiting note"; }
pub --run-dir runs/early --run-id early --steps 10 --wait-subscriber 30 > pub_early.log 2>&1 \
  || { show pub_early.log early.out early.err; fail "publisher (no subscriber came?)"; }
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] || { show early.out early.err; fail "monitor exit $rc after a completed run, expected 0"; }
[ "$(grep -cE '^step ([1-9]|10)/10 loss [0-9.]+ ce ' early.out)" -eq 10 ] || { show early.out; fail "10 step lines"; }
pass "a monitor started before the run waits for monitor.json, then shows every step"

grep -qE '^run early session [0-9a-f]{16} at step 0$' early.out || { show early.out; fail "run line"; }
grep -qE '^meta run early steps 10 start 0 params 1.23M world 2 threads 1 layers 2 .* experts 4 top-1 domains alpha,beta teacher none$' \
  early.out || { show early.out; fail "meta line"; }
grep -qE '^step 1/10 loss 6.7074 ce 4.0244 kd 2.6830 aux 0.01 alpha 0.500 lr 6.000e-05 gnorm 2 tok/s 12.3k mfu 0.410 step_ms 331.7 eta 3s tokens 4.1k dropped 0.0000 load\[2L\]( 0\.[0-9]{3}){4}$' \
  early.out || { show early.out; fail "step 1 line (z_loss null is left out)"; }
grep -qE '^step 2/10 .* z 0.0001 ' early.out || { show early.out; fail "step 2 has z"; }
grep -qE '^eval step 5 alpha 3.4500 \(ppl 31.50\) beta -$' early.out || { show early.out; fail "eval line"; }
grep -qE '^ckpt step 10 ok 0.25s ckpt/early/step_00000010.h5$' early.out || { show early.out; fail "ckpt line"; }
grep -qE '^end completed step 10 exit 0 published [0-9]+$' early.out || { show early.out; fail "end line"; }
grep -qE '^log info: training early from step 0\?\[31m$' early.out || { show early.out; fail "log line, escaped"; }
! grep -q $'\x1b' early.out || fail "an escape character from a message reached stdout"
! grep -q "warning" early.err || { show early.err; fail "warnings on a clean stream"; }
pass "plain records: run, meta, step, eval, ckpt, log (control characters replaced), end"

# An ENDPOINT not bound yet: zmq connects when the run binds it.
monitor_bg late ipc://$tmp/late.ipc
sleep 0.5
pub --run-dir runs/late --bind ipc://$tmp/late.ipc --steps 5 --wait-subscriber 30 > pub_late.log 2>&1 \
  || { show pub_late.log late.err; fail "publisher on ipc"; }
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] && [ "$(grep -c '^step ' late.out)" -eq 5 ] || { show late.out late.err; fail "late bind: exit $rc"; }
pass "ENDPOINT before it is bound: connects when the run binds it"

# ---- (3) --json ----
pub_bg pub_json.log --run-dir runs/json --run-id json --steps 12 --wait-subscriber 30
wait_file runs/json/monitor.json
monitor_bg json --json "$(json_field runs/json/monitor.json endpoint)"
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] || { show json.out json.err pub_json.log; fail "--json: exit $rc"; }
"$PYTHON" - <<'PY' || fail "--json output"
import json
out = [json.loads(l) for l in open("json.out")]  # every line one JSON object
file = {r["seq"]: r for r in map(json.loads, open("runs/json/metrics.jsonl"))}
topics = {"mome.meta", "mome.train", "mome.eval", "mome.ckpt", "mome.log", "mome.end"}
assert all(isinstance(r, dict) and r.get("topic") in topics for r in out), "topic on every line"
assert [r["step"] for r in out if r["topic"] == "mome.train"] == list(range(1, 13)), "12 train records"
assert out[-1]["topic"] == "mome.end" and out[-1]["status"] == "completed"
# what the run wrote to metrics.jsonl, message for message, with the same numbers
same = [r for r in out if r["seq"] in file]
assert len(same) >= 12 + 2 + 2 + 1 and all(r == file[r["seq"]] for r in same), "records differ from metrics.jsonl"
raw = open("json.out").read().splitlines()
assert all(l.endswith(',"topic":"%s"}' % json.loads(l)["topic"]) for l in raw), "the publisher's text is kept"
print("json lines:", len(out))
PY
wait_rc "$pub_pid"; [ "$rc" -eq 0 ] || { show pub_json.log; fail "--json: publisher"; }
! grep -q warning json.err || { show json.err; fail "--json: warnings"; }
pass "--json: one object per line, the published text with \"topic\" added, equal to metrics.jsonl"

# ---- (4) malformed messages ----
monitor_bg bad runs/bad
pub --run-dir runs/bad --run-id bad --steps 10 --malformed --wait-subscriber 30 > pub_bad.log 2>&1 \
  || { show pub_bad.log bad.err; fail "publisher with malformed messages"; }
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] || { show bad.out bad.err; fail "malformed: exit $rc, expected 0"; }
kinds=$(grep -c '^malformed: ' pub_bad.log)
skipped=$(grep -c 'warning: monitor: skipped a message' bad.err || true)
[ "$kinds" -ge 15 ] && [ "$skipped" -eq "$kinds" ] || { show pub_bad.log bad.err; fail "$kinds malformed kinds sent, $skipped skipped"; }
for why in "1 frame, expected 2" "3 frames, expected 2" "unknown topic" "not printable ASCII" "invalid JSON" \
           "duplicate object key" "not a JSON object" "field 'loss' is missing" "field 'session' is missing" \
           "field 'loss' is a string, expected a number or null" "field 'step' is a real number" \
           "not 16 hex digits" "schema version 2" "field 'expert_load'" "field 'ok' is a string" \
           "unknown status 'exploded'" "above the limit"; do
  grep -qF "$why" bad.err || { show bad.err; fail "no warning for: $why"; }
done
[ "$(grep -c '^step ' bad.out)" -eq 10 ] && grep -q '^end completed' bad.out || { show bad.out; fail "malformed: records"; }
pass "$kinds kinds of malformed message skipped with a warning each; the monitor went on and exited 0"

monitor_bg badjson --json runs/badjson
pub --run-dir runs/badjson --steps 4 --malformed --wait-subscriber 30 > pub_badjson.log 2>&1 || fail "publisher"
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] || { show badjson.err; fail "--json with malformed messages: exit $rc"; }
"$PYTHON" -c '
import json, sys
out = [json.loads(l) for l in open("badjson.out")]
assert [r["step"] for r in out if r["topic"] == "mome.train"] == [1, 2, 3, 4], out
assert all(r["v"] == 1 and len(r["session"]) == 16 for r in out)' || fail "--json passed a malformed message"
pass "--json: malformed messages are not passed through"

# ---- (5) a run that stops, then resumes on a new endpoint ----
monitor_bg rs runs/rs
pub --run-dir runs/rs --run-id rs --bind ipc://$tmp/rs1.ipc --steps 10 --stop-at 4 --end stopped \
  --wait-subscriber 30 > pub_rs1.log 2>&1 || { show pub_rs1.log rs.err; fail "first session"; }
cp runs/rs/monitor.json rs1.json
sleep 0.5
kill -0 "$mon_pid" 2>/dev/null || { show rs.out rs.err; fail "the monitor exited after a stopped run"; }
grep -qE '^end stopped step 4 exit 75' rs.out || { show rs.out; fail "end stopped line"; }
grep -q "waiting for it to resume" rs.err || { show rs.err; fail "no note that the monitor waits for the run"; }
pub --run-dir runs/rs --run-id rs --bind ipc://$tmp/rs2.ipc --steps 10 --start-step 4 \
  --wait-subscriber 30 > pub_rs2.log 2>&1 || { show pub_rs2.log rs.out rs.err; fail "second session (not followed?)"; }
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] || { show rs.out rs.err; fail "restart: exit $rc, expected 0"; }
s1=$(json_field rs1.json session); s2=$(json_field runs/rs/monitor.json session)
[ "$s1" != "$s2" ] && [ "$(json_field rs1.json endpoint)" != "$(json_field runs/rs/monitor.json endpoint)" ] \
  || fail "the sessions or endpoints of the two runs are the same"
grep -qE "^restart run rs session $s2 at step 4 \(was $s1\)$" rs.out || { show rs.out; fail "restart line"; }
[ "$(grep -cE '^step ' rs.out)" -eq 10 ] && grep -qE '^step 10/10 ' rs.out && grep -qE '^end completed step 10' rs.out \
  || { show rs.out; fail "steps 1-10 over the two sessions"; }
pass "stopped, then restarted on a new endpoint: followed through monitor.json, exit 0 at completion"

# ---- (6) failed ----
monitor_bg failed runs/failed
pub --run-dir runs/failed --steps 3 --end failed --wait-subscriber 30 > pub_failed.log 2>&1 || fail "publisher"
wait_rc "$mon_pid"
[ "$rc" -eq 1 ] && grep -qE '^end failed step 3 exit 1' failed.out || { show failed.out failed.err; fail "failed: exit $rc"; }
pass "a failed run: exit 1"

# ---- (7) --timeout ----
start=$(date +%s.%N)
rc=0; timeout 30 "$MOME_BIN" monitor --timeout 1 tcp://127.0.0.1:9 > to.out 2> to.err || rc=$?
took=$("$PYTHON" -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$start" "$(date +%s.%N)")
[ "$rc" -eq 3 ] && grep -q "no message for 1s" to.err || { show to.err; fail "--timeout on an endpoint: exit $rc"; }
"$PYTHON" -c "import sys; sys.exit(0 if 0.9 <= float(sys.argv[1]) < 5 else 1)" "$took" || fail "--timeout 1 took ${took}s"
rc=0; timeout 30 "$MOME_BIN" monitor --timeout 0.5 runs/never > to2.out 2> to2.err || rc=$?
[ "$rc" -eq 3 ] || { show to2.err; fail "--timeout on a run that never starts: exit $rc"; }
pub_bg pub_quiet.log --run-dir runs/quiet --steps 3 --end none --wait-subscriber 30
wait_file runs/quiet/monitor.json
monitor_bg quiet --timeout 2 runs/quiet
wait_rc "$mon_pid"
[ "$rc" -eq 3 ] && [ "$(grep -c '^step ' quiet.out)" -eq 3 ] || { show quiet.out quiet.err; fail "--timeout after a run went quiet: exit $rc"; }
pass "--timeout: exit 3 (after ${took}s for 1s), also for a run that never starts or goes quiet"

# ---- (8) CURVE ----
mkdir keys
"$MOME_BIN" monitor --keygen keys/run > keygen.out || fail "--keygen"
[ "$(stat -c %a keys/run.key)" = 600 ] || fail "keys/run.key has mode $(stat -c %a keys/run.key), expected 600"
for f in keys/run.key keys/run.pub; do
  [ "$(tr -d '\n' < $f | wc -c)" -eq 40 ] || fail "$f: not a 40-character key"
done
"$PYTHON" -c '
import sys, zmq
sec, pub = (open("keys/run." + e, "rb").read().strip() for e in ("key", "pub"))
sys.exit(0 if zmq.curve_public(sec) == pub else 1)' || fail "keys/run.pub is not the public key of keys/run.key"
expect_fail "not overwriting" "$MOME_BIN" monitor --keygen keys/run
pass "--keygen: a Z85 pair, the secret key mode 0600, never overwritten"

pub_bg pub_curve.log --run-dir runs/curve --steps 5 --curve-secret keys/run.key --wait-subscriber 30
wait_file runs/curve/monitor.json
grep -qF "\"curve_server_key\": \"$(cat keys/run.pub)\"" runs/curve/monitor.json || fail "publisher's monitor.json key"
endpoint=$(json_field runs/curve/monitor.json endpoint)
monitor_bg curve --server-key keys/run.pub "$endpoint"
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] && [ "$(grep -c '^step ' curve.out)" -eq 5 ] || { show curve.out curve.err; fail "CURVE with --server-key FILE: exit $rc"; }
wait_rc "$pub_pid"; [ "$rc" -eq 0 ] || { show pub_curve.log; fail "CURVE publisher"; }
monitor_bg curve2 runs/curve2
pub --run-dir runs/curve2 --steps 5 --curve-secret keys/run.key --wait-subscriber 30 > pub_curve2.log 2>&1 \
  || { show curve2.err; fail "CURVE publisher, key from monitor.json"; }
wait_rc "$mon_pid"
[ "$rc" -eq 0 ] && [ "$(grep -c '^step ' curve2.out)" -eq 5 ] && grep -q "(CURVE)" curve2.err \
  || { show curve2.out curve2.err; fail "CURVE with the key of monitor.json: exit $rc"; }
pass "CURVE-encrypted stream watched with --server-key and with monitor.json's curve_server_key"

"$MOME_BIN" monitor --keygen keys/other > /dev/null
pub_bg pub_curve3.log --run-dir runs/curve3 --steps 5 --curve-secret keys/run.key --wait-subscriber 50
wait_file runs/curve3/monitor.json
endpoint=$(json_field runs/curve3/monitor.json endpoint)
rc=0; timeout 30 "$MOME_BIN" monitor --timeout 3 --server-key "$(cat keys/other.pub)" "$endpoint" > wrong.out 2> wrong.err || rc=$?
[ "$rc" -eq 3 ] && [ ! -s wrong.out ] && grep -q "handshake" wrong.err || { show wrong.out wrong.err; fail "wrong key: exit $rc"; }
rc=0; timeout 30 "$MOME_BIN" monitor --timeout 3 "$endpoint" > nokey.out 2> nokey.err || rc=$?
[ "$rc" -eq 3 ] && [ ! -s nokey.out ] && grep -q "handshake" nokey.err || { show nokey.out nokey.err; fail "no key: exit $rc"; }
kill "$pub_pid" 2>/dev/null || true
pass "a wrong server key, or none, reads nothing and says the handshake fails"

# ---- SIGINT ----
monitor_bg int runs/nothing
sleep 0.5
kill -INT "$mon_pid"
wait_rc "$mon_pid"
[ "$rc" -eq 130 ] || { show int.out int.err; fail "SIGINT: exit $rc, expected 130"; }
timeout 30 "$PYTHON" - "$MOME_BIN" <<'PY' || fail "SIGINT in the terminal view"
import os, pty, signal, subprocess, sys, time
master, slave = pty.openpty()
p = subprocess.Popen([sys.argv[1], "monitor", "runs/nothing"], stdin=slave, stdout=slave, stderr=slave,
                     env=dict(os.environ, LANG="C.UTF-8"), start_new_session=True)
os.close(slave)
time.sleep(1)
p.send_signal(signal.SIGINT)
out = b""
while True:
    try:
        d = os.read(master, 65536)
    except OSError:
        break
    if not d:
        break
    out += d
rc = p.wait()
assert rc == 130, "exit %d" % rc
assert b"interrupted" in out and out.endswith(b"\x1b[?25h"), out[-300:]
PY
pass "SIGINT: clean exit 130, the terminal view leaves the cursor shown"

# ---- the terminal view, under a pseudo-terminal ----
# pty_view COLS ROWS NAME RUN_DIR: runs the monitor on a pty of that size in the background (raw output NAME.tty);
# check_view NAME COLS ROWS STEPS: replays the output on a small terminal model and checks the final screen.
pty_view() {
  COLS=$1 ROWS=$2 OUT=$3.tty timeout 60 "$PYTHON" - "$MOME_BIN" monitor "$4" > "$3.pty.log" 2>&1 <<'PY' &
import fcntl, os, pty, struct, subprocess, sys, termios, time
master, slave = pty.openpty()
fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", int(os.environ["ROWS"]), int(os.environ["COLS"]), 0, 0))
env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8", TERM="xterm")
t0 = time.time()
p = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
os.close(slave)
out = b""
while True:
    try:
        d = os.read(master, 65536)
    except OSError:
        break
    if not d:
        break
    out += d
rc = p.wait()
open(os.environ["OUT"], "wb").write(out)
print("exit %d seconds %.2f" % (rc, time.time() - t0))
sys.exit(rc)
PY
  mon_pid=$!
  bg_pids+=("$mon_pid")
}
check_view() {
  NAME=$1 COLS=$2 ROWS=$3 STEPS=$4 "$PYTHON" - <<'PY'
import os, re, sys
cols, rows, steps = int(os.environ["COLS"]), int(os.environ["ROWS"]), int(os.environ["STEPS"])
name = os.environ["NAME"]
text = open(name + ".tty", "rb").read().decode("utf-8")
seconds = float(open(name + ".pty.log").read().split()[3])
screen = [[" "] * cols for _ in range(rows)]
r = c = 0
wrapped = 0
in_block = False  # between the start of a redraw and its final erase: lines must not wrap there
def newline():
    global r
    r += 1
    if r == rows:
        screen.pop(0)
        screen.append([" "] * cols)
        r = rows - 1
i = 0
while i < len(text):
    ch = text[i]
    if ch == "\x1b":
        m = re.match(r"\x1b\[(\??)([0-9]*)([A-Za-z])", text[i:])
        assert m, "unexpected escape sequence %r" % text[i:i + 12]
        q, arg, fin = m.groups()
        n = int(arg) if arg else 1
        if m.group(0) == "\x1b[?25l":
            in_block = True
        if fin == "J":
            in_block = False
        if fin == "A":
            r = max(0, r - n)
        elif fin in "KJ":
            screen[r][c:] = [" "] * (cols - c)
            if fin == "J":
                for rr in range(r + 1, rows):
                    screen[rr] = [" "] * cols
        else:
            assert fin in "mhl", "unexpected escape sequence %r" % m.group(0)
        i += len(m.group(0))
        continue
    if ch == "\r":
        c = 0
    elif ch == "\n":
        newline()
    else:
        assert ord(ch) >= 0x20, "control character %r on the terminal" % ch
        if c >= cols:
            wrapped += in_block
            c = 0
            newline()
        screen[r][c] = ch
        c += 1
    i += 1
lines = ["".join(x).rstrip() for x in screen]
final = "\n".join(lines)
print(final)
draws = text.count("\x1b[?25l")
assert wrapped == 0, "%d lines of the live view wrapped" % wrapped
assert final.count("mome monitor  run") == 1 and len(re.findall(r"step \d+/%d " % steps, final)) == 1, "stale views left"
assert "step %d/%d" % (steps, steps) in final and "100.0%" in final, "final step and progress"
assert re.search(r"loss [0-9.]+ +ce [0-9.]+ +kd", final) and "MFU 0.410" in final and "tok/s 12.3k" in final
assert "end completed step %d" % steps in text, "end line"
assert re.search(r"experts: 4 top-1, load (per layer|as the mean over \d+ lay)", final), "expert section"
assert "e3 " in final or "L0 " in final, "expert bars"
assert draws <= 5 * seconds + 3, "%d redraws in %.1f s" % (draws, seconds)
assert text.rstrip().endswith("\x1b[?25h"), "cursor shown again at exit"
print("redraws: %d in %.1f s" % (draws, seconds))
PY
}
for size in "100 30" "48 14"; do
  set -- $size
  name=view_$1x$2
  pty_view "$1" "$2" "$name" "runs/$name"
  pub --run-dir "runs/$name" --run-id "$name" --steps 100 --layers 4 --interval 0.02 --wait-subscriber 30 \
    > "pub_$name.log" 2>&1 || { show "$name.pty.log"; fail "publisher for the terminal view"; }
  wait_rc "$mon_pid"
  [ "$rc" -eq 0 ] || { show "$name.pty.log"; fail "terminal view $1x$2: exit $rc"; }
  check_view "$name" "$1" "$2" 100 > "$name.screen" 2>&1 || { cat "$name.screen"; fail "terminal view $1x$2"; }
  pass "terminal view ${1}x$2: $(tail -n 1 "$name.screen")"
done
