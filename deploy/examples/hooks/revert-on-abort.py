#!/usr/bin/env python3
"""A weir post-rollout webhook that writes an abort back to git (the source of truth).

When weir aborts a canary, the config in git still names it: the next pipeline run would roll the
same bad version out again. This receiver, told by a `post-rollout` (or `rollback`) webhook that
a rollout ended with outcome `Aborted`, finds the latest commit that changed the config file's
line naming the aborted version and runs `git revert --no-edit` on it, in the repository given.
Push the revert (or let your pipeline pick it up) and weir sees the canary removed.

    python3 revert-on-abort.py --repo /srv/deploy --file weir.yaml --port 9100

    webhooks:
      - name: revert
        type: post-rollout
        url: http://127.0.0.1:9100/

Only the standard library; one revert per (service, revision); answers 200 when there is nothing
to do or the revert was made, 500 (with git's message) when it failed.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
DONE = set()


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)


def revert(repo, path, version):
    """Reverts the latest commit whose diff of `path` adds or removes a line naming `version`."""
    pattern = r"version:\s*[\"']?" + version.replace(".", r"\.") + r"[\"']?\s*(,|}|$)"
    found = git(repo, "log", "-n", "1", "--format=%H", "-G", pattern, "--", path)
    commit = found.stdout.strip()
    if found.returncode != 0 or not commit:
        return False, f"no commit of {path} names version {version}: {found.stderr.strip()}"
    done = git(repo, "revert", "--no-edit", commit)
    if done.returncode != 0:
        return False, f"git revert {commit} failed: {done.stderr.strip() or done.stdout.strip()}"
    return True, f"reverted {commit}"


class Handler(BaseHTTPRequestHandler):
    repo = "."
    file = None

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(min(length, 1 << 20)) or b"{}")
        except ValueError:
            return self.answer(400, "not JSON")
        revert_info = body.get("revert") or {}
        aborted = body.get("outcome") == "Aborted" or body.get("type") == "rollback"
        version = revert_info.get("abortedVersion")
        if not aborted or not version:
            return self.answer(200, "nothing to revert")
        key = (body.get("service"), revert_info.get("revision"))
        path = self.file
        if path is None and revert_info.get("configFile"):
            path = os.path.relpath(revert_info["configFile"], self.repo)
        if path is None:
            return self.answer(500, "no config file: pass --file")
        with LOCK:
            if key in DONE:
                return self.answer(200, "already reverted")
            ok, message = revert(self.repo, path, version)
            if ok:
                DONE.add(key)
        self.answer(200 if ok else 500, message)

    def answer(self, status, text):
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print("revert-on-abort:", fmt % args, file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="the git repository holding the config")
    parser.add_argument("--file", help="the config's path in the repository (default: from the body)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    args = parser.parse_args()
    Handler.repo, Handler.file = args.repo, args.file
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on {server.server_address[0]}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
