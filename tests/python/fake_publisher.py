#!/usr/bin/env python3
"""A stand-in for the monitor stream of `mome train` (docs/monitoring.md), for tests/scripts/monitor_cli.sh.

Binds an XPUB socket like rank 0 of a run, writes RUN_DIR/monitor.json atomically with the endpoint it got, and
publishes a run: mome.meta (again to every new subscriber), a mome.log line, one mome.train per step, mome.eval
and mome.ckpt every few steps, and mome.end. Records also go to RUN_DIR/metrics.jsonl with their topic, as the
run writes them. --malformed sends, after the second step, one message of every malformed kind the monitor must
skip; it prints each kind on stdout as "malformed: KIND".

--wait-subscriber makes the run wait for a subscription before it starts, so that a test sees every message (the
real run never waits: a late subscriber only misses the first messages).
"""
import argparse
import json
import math
import os
import random
import socket
import sys
import time

import zmq


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--run-id", default="fake")
    ap.add_argument("--bind", default="tcp://127.0.0.1:0")
    ap.add_argument("--steps", type=int, default=10, help="total steps of the run")
    ap.add_argument("--start-step", type=int, default=0, help="where this session starts (a resumed run)")
    ap.add_argument("--stop-at", type=int, help="last step this session publishes (default --steps)")
    ap.add_argument("--end", choices=["completed", "stopped", "failed", "none"], default="completed")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4, help="0: a dense model (expert_load null)")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--ckpt-every", type=int, default=5)
    ap.add_argument("--malformed", action="store_true")
    ap.add_argument("--wait-subscriber", type=float, default=0, help="seconds to wait for a subscriber (0: none)")
    ap.add_argument("--interval", type=float, default=0.002, help="seconds between steps")
    ap.add_argument("--curve-secret", help="file holding the server's Z85 CURVE secret key")
    ap.add_argument("--linger", type=float, default=0.5, help="seconds to stay up after the last message")
    return ap.parse_args()


class Run:
    def __init__(self, a):
        self.a = a
        self.session = "%016x" % random.getrandbits(64)
        self.seq = 0
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100000)
        public = None
        if a.curve_secret:
            secret = open(a.curve_secret, "rb").read().split()[0]
            public = zmq.curve_public(secret).decode()
            self.sock.curve_server = True
            self.sock.curve_secretkey = secret
        self.sock.bind(a.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        os.makedirs(a.run_dir, exist_ok=True)
        info = {"v": 1, "run_id": a.run_id, "session": self.session, "endpoint": self.endpoint,
                "curve_server_key": public, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        tmp = os.path.join(a.run_dir, "monitor.json.tmp.%d" % os.getpid())
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, os.path.join(a.run_dir, "monitor.json"))
        self.metrics = open(os.path.join(a.run_dir, "metrics.jsonl"), "a")
        self.meta = {"config": "[train]\nsteps = %d\nrun_name = %s\n" % (a.steps, a.run_id), "n_params": 1234567,
                     "world": 2, "threads": 1, "steps": a.steps, "start_step": a.start_step, "tokens_per_step": 4096,
                     "flop_per_token": 7.5e6, "sgemm_gflops": 80.5,
                     "model": {"n_layer": a.layers, "d_model": 64, "n_head": 2, "vocab_size": 512, "seq_len": 64,
                               "n_experts": a.experts if a.experts > 0 else None,
                               "top_k": 1 if a.experts > 0 else None},
                     "domains": ["alpha", "beta"], "teacher": None}

    def common(self, step):
        o = {"v": 1, "run_id": self.a.run_id, "session": self.session, "seq": self.seq, "t": time.time(),
             "step": step}
        self.seq += 1
        return o

    def publish(self, topic, step, fields, to_file=True):
        o = self.common(step)
        o.update(fields)
        text = json.dumps(o, separators=(",", ":"), allow_nan=False)
        self.sock.send_multipart([topic.encode(), text.encode()])
        if to_file:
            o["topic"] = topic
            self.metrics.write(json.dumps(o, separators=(",", ":"), allow_nan=False) + "\n")
            self.metrics.flush()

    def poll(self, step):
        """Subscriptions arriving: each new subscriber gets mome.meta (to the stream only)."""
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.publish("mome.meta", step, self.meta, to_file=False)

    def wait_subscriber(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.sock.poll(100, zmq.POLLIN):
                msg = self.sock.recv()
                if msg[:1] == b"\x01":
                    self.publish("mome.meta", self.a.start_step, self.meta, to_file=False)
                    return True
        return False

    def train(self, step):
        a = self.a
        load = None
        if a.experts > 0:
            load = []
            for _ in range(a.layers):
                row = [random.random() + 0.5 for _ in range(a.experts)]
                s = sum(row)
                load.append([x / s for x in row])
        loss = 6.0 * math.exp(-step / 20.0) + 1.0
        return {"loss": loss, "ce": loss * 0.6, "kd": loss * 0.4, "aux": 0.01, "z_loss": None if step == 1 else 1e-4,
                "alpha": 0.5, "lr": 3e-4 * min(1.0, step / 5), "grad_norm": 1.0 + 1.0 / step,
                "tokens_per_s": 12345.6, "mfu": 0.41, "step_ms": 331.7, "eta_s": (a.steps - step) * 0.3317,
                "tokens_seen": 4096 * step, "dropped_frac": 0.0, "teacher_bytes": None, "expert_load": load}

    def malformed(self, step):
        good = self.common(step)
        self.seq -= 1  # malformed messages do not take a sequence number of the run
        good.update(self.train(step))

        def body(o):
            return json.dumps(o, separators=(",", ":")).encode()

        def changed(**kw):
            o = dict(good)
            o.update(kw)
            return body(o)

        def without(key):
            o = dict(good)
            del o[key]
            return body(o)

        ragged = dict(good, expert_load=[[0.5, 0.5], [1.0]])
        kinds = [
            ("one frame", [b"mome.train"]),
            ("three frames", [b"mome.train", body(good), b"extra"]),
            ("unknown topic", [b"mome.bogus", body(good)]),
            ("binary topic", [b"mome.\xff\x1b[2J", body(good)]),
            ("invalid JSON", [b"mome.train", b'{"v": 1, "loss": ']),
            ("NaN literal", [b"mome.train", body(good).replace(b'"loss":', b'"loss":NaN,"x":', 1)]),
            ("invalid UTF-8", [b"mome.log", b'{"level":"info","message":"\xff\xfe"}']),
            ("duplicate key", [b"mome.train", body(good)[:-1] + b',"loss":1}']),
            ("not an object", [b"mome.train", b"[1, 2, 3]"]),
            ("empty body", [b"mome.train", b""]),
            ("missing field", [b"mome.train", without("loss")]),
            ("missing common field", [b"mome.train", without("session")]),
            ("wrong type", [b"mome.train", changed(loss="low")]),
            ("wrong type step", [b"mome.train", changed(step=2.5)]),
            ("bad session", [b"mome.train", changed(session="not-hex!")]),
            ("schema version 2", [b"mome.train", changed(v=2)]),
            ("ragged expert_load", [b"mome.train", body(ragged)]),
            ("ckpt ok not a bool", [b"mome.ckpt", changed(path="x.h5", ok="yes", seconds=1.0, error=None)]),
            ("unknown end status", [b"mome.end", changed(status="exploded", exit_code=0, published=1)]),
            ("oversized", [b"mome.log", changed(level="info", message="x" * (2 << 20))]),
        ]
        for kind, frames in kinds:
            self.sock.send_multipart(frames)
            print("malformed: %s" % kind, flush=True)

    def go(self):
        a = self.a
        if a.wait_subscriber > 0 and not self.wait_subscriber(a.wait_subscriber):
            print("fake_publisher: no subscriber within %g s" % a.wait_subscriber, file=sys.stderr)
            return 4
        last = a.stop_at if a.stop_at is not None else a.steps
        # the run's own start: mome.meta (also to metrics.jsonl) and a log line
        self.publish("mome.meta", a.start_step, self.meta)
        self.publish("mome.log", a.start_step, {"level": "info", "message": "training %s from step %d\x1b[31m" %
                                                (a.run_id, a.start_step)})
        for step in range(a.start_step + 1, last + 1):
            self.poll(step - 1)
            self.publish("mome.train", step, self.train(step))
            if a.malformed and step == a.start_step + 2:
                self.malformed(step)
            if a.eval_every and step % a.eval_every == 0:
                self.publish("mome.eval", step, {"val_loss": {"alpha": 3.5 - step / 100, "beta": None},
                                                 "val_ppl": {"alpha": math.exp(3.5 - step / 100), "beta": None}})
            if a.ckpt_every and step % a.ckpt_every == 0:
                self.publish("mome.ckpt", step, {"path": "ckpt/%s/step_%08d.h5" % (a.run_id, step), "ok": True,
                                                 "seconds": 0.25, "error": None})
            time.sleep(a.interval)
        if a.end != "none":
            code = {"completed": 0, "stopped": 75, "failed": 1}[a.end]
            self.publish("mome.end", last, {"status": a.end, "exit_code": code, "published": self.seq + 1})
        time.sleep(a.linger)
        self.sock.close(linger=1000)
        self.ctx.term()
        self.metrics.close()
        return 0


if __name__ == "__main__":
    sys.exit(Run(parse_args()).go())
