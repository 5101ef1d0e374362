"""A local HTTP endpoint for the demo: prints every POSTed batch, answers GET with a page of records."""
import http.server, json, sys, urllib.parse

class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        batch = json.loads(body)
        print(f"sink received {batch['action']} of {len(batch['records'])} records: "
              + ", ".join(r["key"] for r in batch["records"]), flush=True)
        self._json({"ok": True})

    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        start = int(q.get("cursor", ["0"])[0]); limit = int(q.get("limit", ["2"])[0])
        end = min(start + limit, 5)
        data = [{"id": i, "email": f"customer{i}@example.com"} for i in range(start, end)]
        self._json({"data": data, "next_cursor": str(end) if end < 5 else None})

    def _json(self, value):
        out = json.dumps(value).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out))); self.end_headers(); self.wfile.write(out)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
print(f"demo sink on 127.0.0.1:{sys.argv[1]}", flush=True)
server.serve_forever()
