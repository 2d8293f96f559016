// What the browser tests share: starting corelb's binaries and stopping them at the end.
import { spawn } from "node:child_process";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = path.resolve(ROOT, process.env.CORELB_BIN_DIR || "target/debug");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** Every process started, killed when the test process exits. */
export const children = [];
process.on("exit", () => children.forEach((c) => c.kill("SIGKILL")));

/** Starts `bin` and resolves with the first stdout match of each regex in `patterns`. */
export function start(bin, args, patterns) {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(BIN, bin), args, { stdio: ["ignore", "pipe", "inherit"] });
    children.push(child);
    const found = patterns.map(() => null);
    const timer = setTimeout(() => reject(new Error(`${bin} did not start: ${found}`)), 20000);
    child.on("exit", (code) => reject(new Error(`${bin} exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      patterns.forEach((re, i) => {
        const m = !found[i] && line.match(re);
        if (m) found[i] = m[1];
      });
      if (found.every(Boolean)) {
        clearTimeout(timer);
        resolve({ child, found });
      }
    });
  });
}
