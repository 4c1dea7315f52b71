// edgekit: one long-lived Node process that runs one ONNX model in onnxruntime-web (WebAssembly backend).
//
// Python (edgekit.runtimes.onnxruntime_web) talks to it over stdin/stdout, one JSON object per line, so that
// verification and timing do not pay Node's start-up and the WebAssembly compile for every call. Requests:
//   {"cmd": "load", "path": "model.onnx", "threads": 1}
//   {"cmd": "run", "data": "<base64 float32>", "shape": [1, 3, 224, 224]}
//   {"cmd": "time", "data": ..., "shape": ..., "warmup": 5, "min_warmup_ms": 1000, "runs": 50}
//   {"cmd": "profile", "data": ..., "shape": ..., "warmup": 2, "runs": 10}   (ORT profiler trace, per operator)
// Replies: "@@edgekit@@ " + {"ok": true, ...} or {"ok": false, "error": "..."}.
"use strict";

const readline = require("node:readline");

// Replies are the stdout lines that start with MARK: onnxruntime-web writes its profiler trace straight to stdout
// (fd 1), and Python collects every other line as that output.
const MARK = "@@edgekit@@ ";
const ort = require("onnxruntime-web");

let session = null;
let modelPath = null;

function tensorFrom(req) {
  const buf = Buffer.from(req.data, "base64");
  const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  return new ort.Tensor("float32", Float32Array.from(data), req.shape);
}

async function runOnce(x) {
  const feeds = { [session.inputNames[0]]: x };
  const out = await session.run(feeds);
  return out[session.outputNames[0]];
}

async function handle(req) {
  if (req.cmd === "load") {
    ort.env.wasm.numThreads = req.threads || 1;
    ort.env.logLevel = "error";
    modelPath = req.path;
    session = await ort.InferenceSession.create(req.path, { executionProviders: ["wasm"] });
    const meta = session.inputMetadata ? session.inputMetadata[0] : null;
    return {
      input_name: session.inputNames[0],
      input_shape: meta && meta.shape ? meta.shape.map((d) => (typeof d === "number" ? d : 1)) : [],
      versions: { onnxruntime_web: ort.env.versions.web, node: process.version, v8: process.versions.v8 },
      simd: ort.env.wasm.simd !== false,
    };
  }
  if (!session) throw new Error("no model loaded");
  if (req.cmd === "run") {
    const y = await runOnce(tensorFrom(req));
    const f = Float32Array.from(y.data);
    return { data: Buffer.from(f.buffer).toString("base64"), shape: y.dims };
  }
  if (req.cmd === "time") {
    const x = tensorFrom(req);
    // V8 first compiles WebAssembly with its baseline tier (Liftoff) and swaps in optimised code later: warm up
    // for a number of runs AND a minimum time, so the timed runs see the optimised tier.
    const t0 = performance.now();
    let warm = 0;
    while (warm < req.warmup || performance.now() - t0 < (req.min_warmup_ms || 0)) {
      await runOnce(x);
      warm += 1;
    }
    const samples = [];
    for (let i = 0; i < req.runs; i++) {
      const s = process.hrtime.bigint();
      await runOnce(x);
      samples.push(Number(process.hrtime.bigint() - s) / 1e6);
    }
    return { samples_ms: samples, warmup_runs: warm };
  }
  if (req.cmd === "profile") {
    // A second session with ORT's profiler on: warm-up + runs, then its Chrome-trace JSON (parsed in Python).
    const x = tensorFrom(req);
    const prof = await ort.InferenceSession.create(modelPath, { executionProviders: ["wasm"], enableProfiling: true });
    const feeds = { [prof.inputNames[0]]: x };
    for (let i = 0; i < req.warmup + req.runs; i++) await prof.run(feeds);
    prof.endProfiling();  // prints the trace (Chrome trace JSON) to stdout before this reply
    await prof.release();
    return {};
  }
  throw new Error(`unknown command ${req.cmd}`);
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let chain = Promise.resolve();
rl.on("line", (line) => {
  // Requests are answered strictly in order.
  chain = chain.then(async () => {
    let reply;
    try {
      reply = { ok: true, ...(await handle(JSON.parse(line))) };
    } catch (e) {
      reply = { ok: false, error: String((e && e.message) || e).split("\n")[0].slice(0, 300) };
    }
    process.stdout.write(MARK + JSON.stringify(reply) + "\n");
  });
});
rl.on("close", () => chain.then(() => process.exit(0)));
