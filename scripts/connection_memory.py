#!/usr/bin/env python3
"""Memory kept per closed connection: the gateway's RSS after 200 warm-up connections, then after
N more (each a full mutual-TLS handshake, one GET /v1/whoami, close). A leak shows as a steady
number of KiB per connection; none as ~0.

    python3 scripts/connection_memory.py --bin .build/release/ketenpoort [--connections 3000]"""
import argparse, os, shutil, signal, socket, ssl, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True)
    parser.add_argument("--connections", type=int, default=3000)
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="ketenpoort-connection-memory-")
    pki = os.path.join(work, "pki")
    subprocess.run([binary, "pki", "init", pki, "--partners", os.path.join(common.ROOT, "Policies/partners.yaml")], check=True, stdout=subprocess.DEVNULL)
    gateway, port = common.start_gateway(binary, work, pki, True, pin=False)
    try:
        context = ssl.create_default_context(cafile=f"{pki}/ca.crt")
        context.load_cert_chain(f"{pki}/partners/jgz-zhz.crt", f"{pki}/partners/jgz-zhz.key")

        def one():
            with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as s:
                s.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
                s.recv(65536)

        for _ in range(200):
            one()
        time.sleep(1)
        before = common.rss_kib(gateway.pid)
        for _ in range(args.connections):
            one()
        time.sleep(1)
        after = common.rss_kib(gateway.pid)
        print(f"RSS after 200 connections: {before} KiB; after {args.connections} more: {after} KiB; "
              f"{(after - before) / args.connections:+.2f} KiB per connection")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
