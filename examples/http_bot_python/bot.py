#!/usr/bin/env python3
"""The smallest complete perch http_bot, Python standard library only.

perch POSTs each event here (signed: X-Perch-Signature = "sha256=" + hex HMAC-SHA256 of
"<X-Perch-Timestamp>.<body>" with the shared secret). This bot:
- refuses a request whose signature or timestamp is wrong (401),
- answers a mention with a card rendered by perch from cards/notification.hbs,
- answers "@bot later ..." with 202, then POSTs the reply to perch's actions_path with
  its own idempotency key (perch sends each key once, however often it is posted).

Environment: PORT (default 9000), PERCH_BOT_SECRET, PERCH_URL (e.g. http://127.0.0.1:8080).
Wire format: schemas/http_bot.*.json.
"""
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["PERCH_BOT_SECRET"].encode()
PERCH_URL = os.environ.get("PERCH_URL", "http://127.0.0.1:8080")
TOLERANCE_S = 300


def signature(timestamp: str, body: bytes) -> str:
    mac = hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def post_later(actions_path: str, event_id: str, text: str) -> None:
    """The slow part, done after answering 202; retried until perch takes it."""
    body = json.dumps({
        "event_id": event_id,
        "actions": [{"key": "answer", "action": "reply",
                     "body": {"type": "text", "text": f"done: {text}"}}],
    }).encode()
    for attempt in range(5):
        ts = str(int(time.time()))
        req = urllib.request.Request(PERCH_URL + actions_path, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "X-Perch-Timestamp": ts,
            "X-Perch-Signature": signature(ts, body),
        })
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status == 202:
                    return
        except OSError as e:
            print(f"late actions not taken yet ({e}); retrying", flush=True)
        time.sleep(0.2 * 2 ** attempt)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ts = self.headers.get("X-Perch-Timestamp", "")
        given = self.headers.get("X-Perch-Signature", "")
        fresh = ts.isdigit() and abs(time.time() - int(ts)) <= TOLERANCE_S
        if not fresh or not hmac.compare_digest(given, signature(ts, body)):
            return self.answer(401, {"error": "bad signature"})
        request = json.loads(body)
        event = request["event"]
        text = event.get("text") or ""
        if "later" in text:
            threading.Thread(target=post_later,
                             args=(request["actions_path"], event["id"], text)).start()
            return self.answer(202, {})
        sender = (event.get("sender") or {}).get("name") or "you"
        card = {"type": "template", "template": "notification",
                "data": {"title": f"Hello {sender}", "level": "info",
                         "text": f"You said: {text}", "source": "python bot"}}
        self.answer(200, {"actions": [{"action": "reply", "body": card}]})

    def answer(self, status, payload):
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "9000"))), Handler)
    print("listening", flush=True)
    server.serve_forever()
