// The dashboard in a real browser: starts backends A, B, C and corelb with its admin
// listener, drives a short bounded load through the proxy, opens the page in headless
// Chromium (Debian's `chromium`, driven by playwright-core), checks that the charts get data
// and the table lists A, B and C with live numbers, and saves a screenshot.
//
//   make test-browser            (builds the binaries, installs playwright-core, runs this)
//   CHROMIUM=/path/to/chromium CORELB_BIN_DIR=target/release node --test tests/browser/
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM, ROOT, children, start } from "./children.mjs";

const OUT = path.resolve(ROOT, process.env.BROWSER_ARTIFACTS || "target/browser");
const MODE = process.env.MODE || "round-robin";
// Updates to wait for before checking (more gives a fuller screenshot).
const UPDATES = Math.max(5, Number(process.env.UPDATES) || 5);
// The load is bounded in time and count, and stays on loopback.
const LOAD_SECONDS = UPDATES + 10;
const LOAD_MAX_REQUESTS = 20000;
const LOAD_CONCURRENCY = 24;

/** Keeps LOAD_CONCURRENCY keep-alive requests in flight until stopped or a limit is hit. */
function load(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), target.slice(target.lastIndexOf(":") + 1)];
  const agent = new http.Agent({ keepAlive: true, maxSockets: LOAD_CONCURRENCY });
  const until = Date.now() + LOAD_SECONDS * 1000;
  const state = { sent: 0, ok: 0, stop: false };
  const one = () =>
    new Promise((done) => {
      const req = http.get({ host, port, path: "/", agent }, (res) => {
        res.resume();
        res.on("end", () => {
          if (res.statusCode === 200) state.ok++;
          done();
        });
      });
      req.on("error", () => done());
    });
  const loop = async () => {
    while (!state.stop && Date.now() < until && state.sent < LOAD_MAX_REQUESTS) {
      state.sent++;
      await one();
    }
  };
  state.done = Promise.all(Array.from({ length: LOAD_CONCURRENCY }, loop)).then(() => agent.destroy());
  return state;
}

test("dashboard shows live charts and backends in headless Chromium", { timeout: 90000 + UPDATES * 1000 }, async () => {
  fs.mkdirSync(OUT, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "corelb-browser-"));
  const servers = [];
  for (const id of ["A", "B", "C"]) {
    const { found } = await start("corelb-backend", ["--id", id, "--port", "0", "--profile", "seed"], [
      /listening on (\S+)/,
    ]);
    const [address, port] = found[0].split(":");
    servers.push({ name: id, address, port: Number(port), priority: 0, load: 1 });
  }
  const config = path.join(tmp, "corelb.json");
  fs.writeFileSync(config, JSON.stringify({ heartbeatInterval: 1, heartbeatTimeout: 1, servers }));
  const { found } = await start(
    "corelb",
    ["--config", config, "--mode", MODE, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-csv", "off"],
    [/corelb listening on (\S+)/, /corelb admin on (http:\/\/\S+)/],
  );
  const [proxy, adminUrl] = found;
  const traffic = load(proxy);

  const context = await chromium.launchPersistentContext(path.join(tmp, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1400, height: 700 },
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
    page.on("request", (r) => {
      if (!r.url().startsWith(adminUrl) && !r.url().startsWith("data:")) problems.push(`outside request: ${r.url()}`);
    });

    await page.goto(adminUrl, { waitUntil: "load" });
    // From the first update: the time axes span at least a minute and no chart repeats a
    // y label (one point used to stretch the axis over years, and 0..1 read 0, 0, 0, 1, 1).
    await page.waitForFunction(() => window.corelbDash && window.corelbDash.events >= 1, null, { timeout: 15000 });
    const early = await page.evaluate(() =>
      Object.entries(window.corelbDash.charts).map(([name, u]) => ({
        name,
        span: u.scales.x.max - u.scales.x.min,
        labels: (u.axes[1]._values || []).map(String),
      })),
    );
    for (const c of early) {
      assert.ok(c.span >= 59 && c.span < 3600, `${c.name}: x span ${c.span} s`);
      assert.ok(c.labels.length >= 2, `${c.name}: y labels ${c.labels}`);
      assert.equal(new Set(c.labels).size, c.labels.length, `${c.name}: distinct y labels ${c.labels}`);
    }
    // A few updates, a second each, while the load runs.
    await page.waitForFunction((n) => window.corelbDash && window.corelbDash.events >= n, UPDATES, {
      timeout: (UPDATES + 15) * 1000,
    });

    const charts = await page.evaluate(() => {
      const d = window.corelbDash;
      const nums = (a) => a.filter((v) => typeof v === "number");
      return {
        points: d.charts.rps.data[0].length,
        rps: nums(d.charts.rps.data[1]),
        p50: nums(d.charts.lat.data[1]),
        p99: nums(d.charts.lat.data[3]),
        shareSeries: d.charts.share.data.length - 1,
        shareTop: nums(d.charts.share.data[1]),
        canvases: document.querySelectorAll(".chart canvas").length,
      };
    });
    assert.ok(charts.points >= 5, `chart points: ${charts.points}`);
    assert.equal(charts.canvases, 3);
    assert.ok(charts.rps.some((v) => v > 0), `rps: ${charts.rps}`);
    assert.ok(charts.p50.some((v) => v > 0) && charts.p99.some((v) => v > 0), "latency percentiles");
    assert.equal(charts.shareSeries, 3);
    assert.ok(charts.shareTop.some((v) => v > 0), `stacked share: ${charts.shareTop}`);

    const table = () =>
      page.$$eval("#backends tbody tr", (rows) =>
        rows.map((r) => Array.from(r.children, (td) => td.textContent.trim())),
      );
    const before = await table();
    assert.deepEqual(before.map((r) => r[0]), ["A", "B", "C"]);
    const count = (s) => Number(s.replace(/,/g, ""));
    for (const r of before) {
      assert.match(r[4], /^up/, `health of ${r[0]}`);
      assert.ok(count(r[7]) > 0, `requests of ${r[0]}: ${r[7]}`);
      for (const k of [9, 10, 11]) assert.match(r[k], /^\d+(\.\d+)? ms$/, `estimate of ${r[0]}: ${r[k]}`);
      assert.equal(r[15], "\u2013", `no gRPC calls to ${r[0]}`);
    }
    assert.equal(await page.textContent("#mode"), MODE);
    assert.equal(await page.getAttribute("#conn", "class"), "live");
    assert.ok(count(await page.textContent("#rps10")) > 0);

    // Live: the numbers move while the load runs.
    const first = before.map((r) => count(r[7]));
    await page.waitForFunction(
      (first) =>
        Array.from(document.querySelectorAll("#backends tbody tr")).every(
          (tr, i) => Number(tr.children[7].textContent.replace(/,/g, "")) > first[i],
        ),
      first,
      { timeout: 10000 },
    );

    // A drain and a reload show as events; the table and the share chart follow the set.
    const call = (method, p) =>
      new Promise((resolve, reject) => {
        const req = http.request(new URL(p, adminUrl), { method }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode));
        });
        req.on("error", reject);
        req.end();
      });
    assert.equal(await call("DELETE", "/servers/C"), 200);
    await page.waitForFunction(
      () =>
        document.querySelector("#events li.ev-drained") &&
        !document.querySelector('#backends tbody tr[data-backend="C"]') &&
        window.corelbDash.charts.share.data.length === 3,
      null,
      { timeout: 15000 },
    );
    assert.equal(await call("POST", "/reload"), 200);
    await page.waitForFunction(
      () =>
        document.querySelector("#events li.ev-reload") &&
        document.querySelector('#backends tbody tr[data-backend="C"]') &&
        window.corelbDash.charts.share.data.length === 4,
      null,
      { timeout: 15000 },
    );
    const kinds = await page.$$eval("#events li .kind", (l) => l.map((e) => e.textContent));
    for (const k of ["drain", "drained", "add", "reload"]) assert.ok(kinds.includes(k), `event ${k}: ${kinds}`);
    assert.match(await page.textContent("#events li time"), /\d+:\d+:\d+/);
    assert.equal(await page.textContent("#reloads"), "1");

    await page.screenshot({ path: path.join(OUT, "dashboard.png"), fullPage: true });
    assert.deepEqual(problems, []);
  } finally {
    traffic.stop = true;
    await traffic.done;
    await context.close();
    children.forEach((c) => c.kill("SIGINT"));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  assert.ok(traffic.ok > 0, "the load got answers");
});
