"""A reward server for Prolong (tools/train --reward-url http://127.0.0.1:8000/score).

It answers POST requests whose body is {"batch": [...]} with {"results": [...]}, scoring each
row with compute_score of reward.py (beside this file). Standard library only:

    python3 reward_server.py --port 8000

--port 0 takes a free port; the line printed at start names the URL.
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward import score_row  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            results = [score_row(row) for row in json.loads(body)["batch"]]
        except Exception as e:  # the status and the message reach the trainer's error
            self.send_error(400 if isinstance(e, (ValueError, KeyError)) else 500, repr(e))
            return
        answer = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"serving on http://{args.host}:{server.server_address[1]}/score", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
