// Starts the gateway Worker in workerd through Miniflare for peewee_kvcache's tests.
//
// Reads one JSON line of options from stdin ({bindings: {SECRET, ...}, persist?: dir}), so no
// secret appears in a command line or an environment listing; prints {"url": ...} as one JSON
// line once the Worker listens on a free loopback port; exits when stdin closes, so a killed
// test run leaves no workerd behind. Run with this folder's parent (worker/) as the working
// directory: ESM imports resolve from there.
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const first = await lines.next();
const options = JSON.parse(first.value ?? "{}");
const mf = new Miniflare({
  modules: true,
  scriptPath: fileURLToPath(new URL("../src/index.js", import.meta.url)),
  modulesRules: [{ type: "ESModule", include: ["**/*.js"] }],
  compatibilityDate: "2025-04-01",
  kvNamespaces: ["KV"],
  kvPersist: options.persist ?? false,
  bindings: options.bindings ?? {},
  host: "127.0.0.1",
  port: 0,
});
const url = await mf.ready;
process.stdout.write(JSON.stringify({ url: url.origin }) + "\n");

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await mf.dispose();
  process.exit(0);
}
process.stdin.on("close", stop);
process.on("SIGTERM", stop);
for await (const _ of lines) { /* keep reading until stdin closes */ }
await stop();
