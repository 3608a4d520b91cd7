#!/usr/bin/env python3
"""Runs every `$ grpcurl ...` command of README.md against a fresh release server and
compares the output with what the README prints (publish times masked). The Security
walk-through's commands go to two more servers on TLS with developer certificates: port
50443 with TLS alone, port 50444 with client certificates, a token and grants.

The two Subscribe streams run in the background while a message is published from "another
terminal", as the README describes. Needs grpcurl on PATH and ports 50051, 50443 and 50444 free.
Usage: cargo build --release && python3 scripts/check-readme.py
(MINI_PUBSUB_BIN names another build of the server, such as target/debug/mini-pubsub.)
"""
import os
import re
import shlex
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIVE = "grpcurl -plaintext -d '{\"topic\":\"events\",\"value\":\"bGl2ZQ==\"}' localhost:50051 pubsub.PubSub/Publish"


HEREDOC = " <<'EOF'"


def blocks(readme):
    """(command, expected output, stdin) for every `$ grpcurl` line in ```text blocks; a
    command ending in <<'EOF' (grpcurl -d @) takes the lines up to EOF as its input."""
    out = []
    for block in re.findall(r"```text\n(.*?)```", readme, re.S):
        command, expected, stdin, reading = None, [], None, False
        for line in block.splitlines():
            if reading:
                if line == "EOF":
                    reading = False
                else:
                    stdin.append(line)
            elif line.startswith("$ "):
                if command:
                    out.append((command, "\n".join(expected), stdin))
                command, expected, stdin = line[2:], [], None
                if command.endswith(HEREDOC):
                    command, stdin, reading = command[: -len(HEREDOC)], [], True
            elif command:
                expected.append(line)
        if command:
            out.append((command, "\n".join(expected), stdin))
    return [(c, e, i) for c, e, i in out if c.startswith("grpcurl")]


def mask(text):
    text = re.sub(r'"publishTime": "[^"]*"', '"publishTime": "…"', text)
    text = re.sub(r'"oldestUnackedAge": "[^"]*"', '"oldestUnackedAge": "…"', text)
    text = re.sub(r'"(leaseExpiry|retryTime)": "[^"]*"', r'"\1": "…"', text)
    # A plaintext dial of a TLS port fails either way; grpcurl's reason depends on timing
    # ("context deadline exceeded", or a write on the connection the server closed).
    text = re.sub(r'(Failed to dial target host "[^"]*"): .*', r'\1: …', text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def run(command, stdin=None, where=None):
    text = "\n".join(stdin) + "\n" if stdin is not None else None
    done = subprocess.run(shlex.split(command), input=text, capture_output=True, text=True, timeout=20, cwd=where)
    return done.stdout + done.stderr


TLS_PORT = "localhost:50443"
# The identities walk-through's server: client certificates, a token for `ops`, grants.
IDENTITIES_PORT = "localhost:50444"
OPS_TOKEN = "s3cret-ops"


def tls_server(binary):
    """The Security walk-through's server: developer certificates in a fresh directory (the
    commands run there, so `certs/ca.pem` resolves), TLS on port 50443."""
    where = tempfile.mkdtemp(prefix="check-readme-tls-")
    subprocess.run([binary, "certs", "dev", "--out", "certs"], cwd=where, check=True, capture_output=True)
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:50443", "--data-dir", "data",
         "--tls-cert", "certs/server.pem", "--tls-key", "certs/server-key.pem"],
        cwd=where, stderr=subprocess.PIPE, text=True)
    startup = server.stderr.readline()
    assert "listening on 127.0.0.1:50443 (TLS" in startup, startup
    return server, where


def identities_server(binary, where):
    """The second Security server, as the README starts it (the token given by its hash)."""
    import hashlib
    digest = hashlib.sha256(OPS_TOKEN.encode()).hexdigest()
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:50444", "--storage", "memory",
         "--tls-cert", "certs/server.pem", "--tls-key", "certs/server-key.pem",
         "--tls-client-ca", "certs/ca.pem", "--tokens", f"ops={digest}",
         "--permissions", "publish:orders.*:dev-client,admin:*:ops"],
        cwd=where, stderr=subprocess.PIPE, text=True)
    startup = server.stderr.readline()
    assert "listening on 127.0.0.1:50444 (TLS" in startup, startup
    # Its log holds the refusals' lines; read and dropped so the pipe never fills.
    threading.Thread(target=server.stderr.read, daemon=True).start()
    return server


def main():
    readme = (ROOT / "README.md").read_text()
    binary = os.environ.get("MINI_PUBSUB_BIN", str(ROOT / "target/release/mini-pubsub"))
    secure, secure_dir = tls_server(binary)
    identities = identities_server(binary, secure_dir)
    # A fresh data directory: the walk-through starts from an empty broker.
    data = tempfile.mkdtemp(prefix="check-readme-")
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", data],
        stderr=subprocess.PIPE,
        text=True,
    )
    failures = 0
    try:
        startup = server.stderr.readline()
        assert "listening on 127.0.0.1:50051" in startup, startup
        streams = []
        for command, expected, stdin in blocks(readme):
            if "Subscribe" in command:
                streams.append((command, expected, subprocess.Popen(
                    shlex.split(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
                continue
            if streams:  # both streams are open: publish from "another terminal"
                time.sleep(1)
                run(LIVE)
                time.sleep(1)
                for stream_command, stream_expected, proc in streams:
                    proc.terminate()
                    failures += compare(stream_command, stream_expected, proc.communicate()[0])
                streams = []
            where = secure_dir if TLS_PORT in command or IDENTITIES_PORT in command else None
            failures += compare(command, expected, run(command, stdin, where))
    finally:
        server.terminate()
        server.wait(timeout=10)
        secure.terminate()
        secure.wait(timeout=10)
        identities.terminate()
        identities.wait(timeout=10)
    print(f"{failures} failed" if failures else "every README command printed what the README shows")
    return 1 if failures else 0


def compare(command, expected, actual):
    if mask(expected) == mask(actual):
        print(f"ok    {command[:100]}")
        return 0
    print(f"FAIL  {command}\n--- README\n{mask(expected)}\n--- actual\n{mask(actual)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
