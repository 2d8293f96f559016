// HTTPS and HTTP/2 to a real browser: corelb with a TLS listener (a throwaway self-signed
// certificate for localhost, made with openssl from `scripts/deps.sh browser`) in front of
// corelb-backend; headless
// Chromium loads a page over it, which must arrive over HTTP/2 (ALPN h2), then opens a
// WebSocket to the backend's /ws echo. Chromium carries that WebSocket on its HTTP/2
// connection (RFC 8441 extended CONNECT) when the server announces it, which corelb does:
// corelb's counters must show one TLS connection, HTTP/2 by ALPN, and the tunnel.
//
//   make test-browser
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM, children, start } from "./children.mjs";


/** corelb's /stats totals. */
function stats(adminUrl) {
  return new Promise((resolve, reject) => {
    http
      .get(new URL("/stats", adminUrl), (res) => {
        let body = "";
        res.on("data", (d) => (body += d));
        res.on("end", () => resolve(JSON.parse(body).totals));
      })
      .on("error", reject);
  });
}

test("Chromium gets HTTP/2 over TLS and a WebSocket over that HTTP/2 connection", { timeout: 60000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "corelb-tls-browser-"));
  const [cert, key] = [path.join(tmp, "cert.pem"), path.join(tmp, "key.pem")];
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  const backend = await start("corelb-backend", ["--id", "A", "--port", "0", "--profile", "fast"], [
    /listening on (\S+)/,
  ]);
  const [address, port] = backend.found[0].split(":");
  const config = path.join(tmp, "corelb.json");
  fs.writeFileSync(config, JSON.stringify({ servers: [{ name: "A", address, port: Number(port) }] }));
  const { found } = await start(
    "corelb",
    [
      "--config", config, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-csv", "off",
      "--workers", "1", "--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key,
    ],
    [/corelb listening for TLS on (\S+)/, /corelb admin on (http:\/\/\S+)/],
  );
  const [tls, adminUrl] = found;
  const origin = `https://localhost:${tls.split(":")[1]}`;

  const context = await chromium.launchPersistentContext(path.join(tmp, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    ignoreHTTPSErrors: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const res = await page.goto(`${origin}/`, { waitUntil: "load" });
    assert.equal(res.status(), 200);
    assert.match(await res.text(), /Response from server A/);
    const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
    assert.equal(protocol, "h2", "the page came over HTTP/2 (ALPN h2)");
    const echoed = await page.evaluate(
      (url) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(url);
          const got = [];
          ws.onopen = () => ["hello", "x".repeat(30000)].forEach((m) => ws.send(m));
          ws.onmessage = (e) => {
            got.push(e.data);
            if (got.length === 2) {
              ws.close();
              resolve(got.map((m) => m.length));
            }
          };
          ws.onerror = () => reject(new Error("WebSocket error"));
          setTimeout(() => reject(new Error("WebSocket timed out")), 10000);
        }),
      `${origin.replace("https", "wss")}/ws`,
    );
    assert.deepEqual(echoed, [5, 30000]);
    const t = await stats(adminUrl);
    assert.equal(t.tls.handshakes, 1, `one TLS connection for the page and the WebSocket: ${JSON.stringify(t.tls)}`);
    assert.equal(t.tls.alpn_h2, 1, JSON.stringify(t.tls));
    assert.ok(t.h2.streams >= 2, `the page and the WebSocket were HTTP/2 streams: ${JSON.stringify(t.h2)}`);
    assert.ok(t.tunnels >= 1, `the WebSocket was a tunnel: ${t.tunnels}`);
  } finally {
    await context.close();
    // The test's process ends only once its children do.
    children.forEach((c) => c.kill("SIGINT"));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
