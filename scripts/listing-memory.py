#!/usr/bin/env python3
"""Peak server memory while 40 clients take whole conversation listings at once (docs/BENCHMARKS.md,
thirteenth session). Usage: listing-memory.py LANES_BINARY PORT DATA_DIR prefill|run -- "prefill" first
fills DATA_DIR (one user in 2,000 groups, each with one 16 KiB message that escapes to ~98 KB of
JSON), "run" reuses it. Loopback only; the server is started and stopped here."""
import json, os, subprocess, sys, tempfile, threading, time, urllib.request, shutil
BIN, PORT, DATA, PREFILL = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "prefill"
cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
cfg.write(f'listen = "127.0.0.1:{PORT}"\ndata_dir = "{DATA}"\n[rate_limits]\nenabled = false\n'); cfg.close()
srv = subprocess.Popen([BIN, "serve", "--config", cfg.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{PORT}"
def call(method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if token: req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=120) as r: return json.loads(r.read() or b"null")
for _ in range(100):
    try: call("GET", "/healthz"); break
    except Exception: time.sleep(0.1)
if PREFILL:
    tok = call("POST", "/v1/register", body={"username": "lister", "password": "long enough pw"})["token"]
    body = "\x01" * 16384
    for i in range(2000):
        cid = call("POST", "/v1/conversations/group", tok, {"name": f"g{i}", "members": []})["conversation_id"]
        call("POST", f"/v1/conversations/{cid}/messages", tok, {"client_msg_id": f"m{i}", "body": body})
    open(DATA + "/token", "w").write(tok)
else:
    tok = open(DATA + "/token").read()
def rss():
    s = open(f"/proc/{srv.pid}/status").read()
    return {k: int(l.split()[1]) for l in s.splitlines() for k in ("VmRSS", "VmHWM") if l.startswith(k + ":")}
before = rss()
t0 = time.time(); errs = []
def get():
    try:
        req = urllib.request.Request(base + "/v1/conversations"); req.add_header("authorization", "Bearer " + tok)
        with urllib.request.urlopen(req, timeout=300) as r: n = len(json.loads(r.read())["conversations"]); assert n == 2000, n
    except Exception as e: errs.append(repr(e))
ts = [threading.Thread(target=get) for _ in range(40)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"bin": BIN, "before_kib": before, "after_kib": rss(), "secs": round(time.time() - t0, 2), "errors": errs[:3]}))
srv.terminate(); srv.wait()
