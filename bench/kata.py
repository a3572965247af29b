#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Kata Containers' VM templating, done by hand for bench/qemu.sh.

Kata's "VM templating" (its factory) boots a template VM whose RAM is a
file on tmpfs (memory-backend-file, share=on), saves its device state with
QEMU's migration and the x-ignore-shared capability (RAM is not copied),
and stops it. Each new VM maps the template file MAP_PRIVATE (share=off)
and loads the device state with -incoming: it copies on write through the
page cache. This is the comparison the issue asks for; the QMP client is
a few lines of JSON, as vmsctl's own.

  kata.py save QMP_SOCKET STATE_FILE
      stop the guest, save its device state (x-ignore-shared), quit QEMU
  kata.py save-full QMP_SOCKET STATE_FILE
      the same with the RAM in the stream (what a QEMU on anonymous RAM
      loads)
  kata.py start COUNT STATE_FILE RUN_DIR -- QEMU ARGS ({name} filled in)
      start COUNT clones one after another, named $PREFIX-N (default
      kata-N); print each one's ms from spawn to running, its pid, and
      the total
"""
import json
import os
import socket
import subprocess
import sys
import time


class Qmp:
    def __init__(self, path, timeout=60):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.01)
        self.s.settimeout(timeout)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())  # greeting
        self.call("qmp_capabilities")

    def call(self, cmd, **args):
        self.f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "error" in r:
                raise RuntimeError(f"{cmd}: {r['error']}")
            if "return" in r:
                return r["return"]

    def wait_migration(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.call("query-migrate").get("status")
            if st == "completed":
                return
            if st in ("failed", "cancelled"):
                raise RuntimeError(f"migration {st}")
            time.sleep(0.005)
        raise RuntimeError("migration did not end")

    def ignore_shared(self):
        self.call("migrate-set-capabilities",
                  capabilities=[{"capability": "x-ignore-shared", "state": True}])


def save(sock, state, ignore_shared=True):
    q = Qmp(sock)
    q.call("stop")
    if ignore_shared:
        q.ignore_shared()
    q.call("migrate", uri=f"file:{state}")
    q.wait_migration()
    q.call("quit")


def start(count, state, run_dir, args):
    total0 = time.time()
    for i in range(1, count + 1):
        name = f"{os.environ.get('PREFIX', 'kata')}-{i}"
        qmp = os.path.join(run_dir, f"{name}.qmp")
        if os.path.exists(qmp):
            os.unlink(qmp)
        t0 = time.time()
        log = open(os.path.join(run_dir, f"{name}.log"), "w")
        p = subprocess.Popen([a.replace("{name}", name) for a in args]
                             + ["-incoming", "defer", "-qmp", f"unix:{qmp},server=on,wait=off"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        q = Qmp(qmp)
        q.ignore_shared()
        q.call("migrate-incoming", uri=f"file:{state}")
        q.wait_migration()
        q.call("cont")
        print(f"{name}: resumed in {(time.time() - t0) * 1000:.1f} ms (QEMU pid {p.pid})", flush=True)
    print(f"{count} Kata-style clones in {(time.time() - total0) * 1000:.0f} ms", flush=True)


def main():
    if sys.argv[1] == "save":
        save(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "save-full":
        save(sys.argv[2], sys.argv[3], ignore_shared=False)
    elif sys.argv[1] == "start":
        sep = sys.argv.index("--")
        start(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[sep + 1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
