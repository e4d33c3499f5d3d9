#!/usr/bin/env python3
"""A partner's delivery endpoint for tests: HTTPS with a client certificate required (mutual
TLS), one JSON line per POST written to OUT with the client's subject serialNumber (the OIN).
The first FAIL requests are answered 503 (to exercise retries); every answer waits DELAY
seconds (a slow partner, so that pushes from two gateway instances overlap).

usage: push_receiver.py PORT CERT KEY CA OUT [FAIL [DELAY]]"""
import http.server, json, ssl, sys, time

port, cert, key, ca, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
failures = [int(sys.argv[6]) if len(sys.argv) > 6 else 0]
delay = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        time.sleep(delay)
        if failures[0] > 0:
            failures[0] -= 1
            self.send_response(503)
            self.end_headers()
            return
        subject = dict(x[0] for x in self.connection.getpeercert().get("subject", ()))
        with open(out, "a") as f:
            f.write(json.dumps({"path": self.path, "oin": subject.get("serialNumber"), "body": json.loads(body)}) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_REQUIRED
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
