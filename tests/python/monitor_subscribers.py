"""Subscribers for tests/scripts/monitor_stream.sh: watches a live `mome train` through its monitor stream.

  monitor_subscribers.py RUN_DIR STEPS OUT.json

Waits for RUN_DIR/monitor.json, then connects three subscribers:
  main    reads everything until mome.end;
  late    connects once main has seen step >= STEPS/3 and records what it receives first (the welcome mome.meta);
  stalled connects at once with tiny receive buffers and never reads until the run has ended, then drains.
Writes what each saw to OUT.json; the shell test asserts on it.
"""
import json
import os
import sys
import time

import zmq

run_dir, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.time() + 240
path = os.path.join(run_dir, "monitor.json")
while not os.path.exists(path):
    if time.time() > deadline:
        sys.exit("no monitor.json")
    time.sleep(0.02)
endpoint = json.load(open(path))["endpoint"]

ctx = zmq.Context()


def sub(rcvhwm=1000, rcvbuf=-1):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    if rcvbuf > 0:
        s.setsockopt(zmq.RCVBUF, rcvbuf)
    s.setsockopt(zmq.SUBSCRIBE, b"mome.")
    s.connect(endpoint)
    return s


main = sub()
stalled = sub(rcvhwm=1, rcvbuf=2048)
late = None
seen = {"main": [], "late": [], "stalled": []}


def record(name, frames):
    topic = frames[0].decode()
    body = json.loads(frames[1])
    seen[name].append({"topic": topic, **body})


ended = False
poller = zmq.Poller()
poller.register(main, zmq.POLLIN)
late_started = None
while time.time() < deadline:
    ev = dict(poller.poll(100))
    if main in ev:
        frames = main.recv_multipart()
        record("main", frames)
        m = seen["main"][-1]
        if m["topic"] == "mome.end":
            ended = True
        if late is None and m["topic"] == "mome.train" and m["step"] >= steps // 3:
            late = sub()
            poller.register(late, zmq.POLLIN)
            late_started = time.time()
    if late is not None and late in ev and len(seen["late"]) < 5:
        record("late", late.recv_multipart())
    if ended:
        break
# the stalled subscriber reads only now: what it gets is what survived its full queue
while True:
    try:
        record("stalled", stalled.recv_multipart(flags=zmq.NOBLOCK))
    except zmq.Again:
        time.sleep(0.2)
        try:
            record("stalled", stalled.recv_multipart(flags=zmq.NOBLOCK))
        except zmq.Again:
            break
json.dump({"ended": ended, **seen}, open(out, "w"))
