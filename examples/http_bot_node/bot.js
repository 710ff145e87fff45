#!/usr/bin/env node
// The smallest complete perch http_bot in Node, no npm packages.
//
// perch POSTs each event here (signed: X-Perch-Signature = "sha256=" + hex HMAC-SHA256
// of "<X-Perch-Timestamp>.<body>" with the shared secret). This bot:
// - refuses a request whose signature or timestamp is wrong (401),
// - answers a mention with a card rendered by perch from cards/notification.hbs,
// - answers "@bot later ..." with 202, then POSTs the reply to perch's actions_path with
//   its own idempotency key (perch sends each key once, however often it is posted).
//
// Environment: PORT (default 9000), PERCH_BOT_SECRET, PERCH_URL. Wire format:
// schemas/http_bot.*.json.
"use strict";
const crypto = require("node:crypto");
const http = require("node:http");

const SECRET = process.env.PERCH_BOT_SECRET;
const PERCH_URL = process.env.PERCH_URL || "http://127.0.0.1:8080";
const TOLERANCE_S = 300;

function signature(timestamp, body) {
  const mac = crypto.createHmac("sha256", SECRET);
  mac.update(`${timestamp}.`);
  mac.update(body);
  return "sha256=" + mac.digest("hex");
}

function signedOk(headers, body) {
  const ts = headers["x-perch-timestamp"] || "";
  const given = Buffer.from(headers["x-perch-signature"] || "");
  const want = Buffer.from(signature(ts, body));
  const fresh = /^\d+$/.test(ts) && Math.abs(Date.now() / 1000 - Number(ts)) <= TOLERANCE_S;
  return fresh && given.length === want.length && crypto.timingSafeEqual(given, want);
}

// The slow part, done after answering 202; retried until perch takes it.
async function postLater(actionsPath, eventId, text) {
  const body = JSON.stringify({
    event_id: eventId,
    actions: [{ key: "answer", action: "reply", body: { type: "text", text: `done: ${text}` } }],
  });
  for (let attempt = 0; attempt < 5; attempt++) {
    const ts = String(Math.floor(Date.now() / 1000));
    try {
      const resp = await fetch(PERCH_URL + actionsPath, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-perch-timestamp": ts,
          "x-perch-signature": signature(ts, body),
        },
        body,
      });
      if (resp.status === 202) return;
      console.log(`late actions refused: ${resp.status} ${await resp.text()}`);
    } catch (e) {
      console.log(`late actions not taken yet (${e}); retrying`);
    }
    await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
  }
}

function answer(res, status, payload) {
  const raw = JSON.stringify(payload);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(raw) });
  res.end(raw);
}

http
  .createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      if (!signedOk(req.headers, body)) return answer(res, 401, { error: "bad signature" });
      const request = JSON.parse(body);
      const event = request.event;
      const text = event.text || "";
      if (text.includes("later")) {
        postLater(request.actions_path, event.id, text);
        return answer(res, 202, {});
      }
      const sender = (event.sender && event.sender.name) || "you";
      const card = {
        type: "template",
        template: "notification",
        data: { title: `Hello ${sender}`, level: "info", text: `You said: ${text}`, source: "node bot" },
      };
      answer(res, 200, { actions: [{ action: "reply", body: card }] });
    });
  })
  .listen(Number(process.env.PORT || 9000), "127.0.0.1", () => console.log("listening"));
