// model.js: one ONNX model (model.onnx beside this file) run by onnxruntime-web's WebAssembly backend.
// Written by edgekit; the runtime files next to it are the exact onnxruntime-web release named in manifest.json.
//
//   import { run } from "./model.js";
//   const logits = await run(new Float32Array(config.inputSize));   // -> Float32Array
//
// Everything is resolved relative to this file, so the folder can be served from any path of a site.
import * as ort from "./ort.wasm.min.mjs";

export const config = /*EDGEKIT_CONFIG*/ {};
export { ort };

const base = new URL("./", import.meta.url);
let sessionPromise = null;

/** Creates the inference session once (later calls return the same one). */
export function load({ threads = config.threads || 1 } = {}) {
  if (!sessionPromise) {
    ort.env.wasm.wasmPaths = base.href;
    // More than one thread needs SharedArrayBuffer, i.e. a cross-origin isolated page (COOP + COEP headers).
    ort.env.wasm.numThreads = self.crossOriginIsolated ? threads : 1;
    ort.env.logLevel = "error";
    sessionPromise = ort.InferenceSession.create(new URL(config.modelFile, base).href, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
  }
  return sessionPromise;
}

/**
 * Runs the model on one input.
 * @param {Float32Array|number[]|ort.Tensor} input config.inputShape elements (row-major), or a tensor.
 * @returns {Promise<Float32Array>} the first output, flattened (config.outputShape).
 */
export async function run(input) {
  const session = await load();
  let x = input;
  if (!(input instanceof ort.Tensor)) {
    const data = input instanceof Float32Array ? input : Float32Array.from(input);
    if (data.length !== config.inputSize) {
      throw new Error(`run: expected ${config.inputSize} values (shape ${config.inputShape}), got ${data.length}`);
    }
    x = new ort.Tensor("float32", data, config.inputShape);
  }
  const out = await session.run({ [session.inputNames[0]]: x });
  return out[session.outputNames[0]].data;
}

/**
 * Times the model in this JavaScript engine: warm-up (a number of runs and a minimum time, because engines first
 * compile WebAssembly with a fast baseline tier), then `runs` timed runs.
 * @returns {Promise<{samples_ms: number[], p50_ms: number, p90_ms: number, warmup_runs: number}>}
 */
export async function benchmark({ input, warmup = 5, minWarmupMs = 1000, runs = 50 } = {}) {
  const x = input || new Float32Array(config.inputSize);
  const t0 = performance.now();
  let warm = 0;
  while (warm < warmup || performance.now() - t0 < minWarmupMs) {
    await run(x);
    warm += 1;
  }
  const samples = [];
  for (let i = 0; i < runs; i++) {
    const s = performance.now();
    await run(x);
    samples.push(performance.now() - s);
  }
  const sorted = [...samples].sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.round(p * (sorted.length - 1)))];
  return { samples_ms: samples, p50_ms: q(0.5), p90_ms: q(0.9), warmup_runs: warm };
}
