// The search page: embed the question in this browser with ONNX Runtime Web, rank the passages.
//
// The same file runs under the app (/search) and in a static export: every URL is relative
// to this module. The page's <body> says where the chat is (data-chat, empty in an export).
// `?ep=wasm` or `?ep=webgpu` forces an execution provider; by default WebGPU is used when
// navigator.gpu gives an adapter, wasm otherwise. Tests and the benchmark drive the page
// through `window.ragSearch` (ready, embed, search).

import { WordPiece } from "./wordpiece.js";

const here = (path) => new URL(path, import.meta.url).href;
const $ = (id) => document.getElementById(id);
const MISSING_RUNTIME =
  "The search runtime is not installed: run `make web` (it needs npm) and reload this page.";

/** "webgpu" when the page may and can use it (an adapter is offered), else "wasm". */
async function pickProvider() {
  const wanted = new URLSearchParams(location.search).get("ep");
  if (wanted === "wasm") return "wasm";
  if (navigator.gpu) {
    try {
      if (await navigator.gpu.requestAdapter()) return "webgpu";
    } catch (err) {
      console.warn("WebGPU adapter request failed; using wasm", err);
    }
  }
  if (wanted === "webgpu") throw new Error("WebGPU was asked for, but this browser offers no adapter.");
  return "wasm";
}

/** float16 (IEEE half, little-endian) rows into one Float32Array. */
function halfToFloat(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * frac * 2 ** -24;
    else if (exp === 31) out[i] = frac ? NaN : sign * Infinity;
    else out[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** The rows of the `k` highest scores, best first (one pass: k is tiny, rows are many). */
function topK(scores, k) {
  const best = [];
  for (let row = 0; row < scores.length; row++) {
    if (best.length === k && scores[row] <= scores[best[k - 1]]) continue;
    let at = best.length === k ? k - 1 : best.length;
    while (at > 0 && scores[best[at - 1]] < scores[row]) {
      best[at] = best[at - 1];
      at -= 1;
    }
    best[at] = row;
  }
  return best.slice(0, k);
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${(await response.text()).slice(0, 300)}`);
  return response;
}

/** The knowledge base: passage metadata and their unit vectors as one row-major Float32Array. */
async function loadIndex() {
  const [meta, raw] = await Promise.all([
    fetchOk(here("../data/index.json")).then((r) => r.json()),
    fetchOk(here("../data/vectors.bin")).then((r) => r.arrayBuffer()),
  ]);
  const vectors = meta.vector_dtype === "float16" ? halfToFloat(new Uint16Array(raw)) : new Float32Array(raw);
  if (vectors.length !== meta.count * meta.dimension) throw new Error("vectors.bin does not match index.json");
  return { meta, vectors };
}

async function loadRuntime(provider) {
  try {
    return await import(here(provider === "webgpu" ? "../runtime/ort.webgpu.min.mjs" : "../runtime/ort.wasm.min.mjs"));
  } catch (err) {
    throw new Error(MISSING_RUNTIME);
  }
}

/** Load runtime, tokenizer, model and index; the returned object embeds and searches. */
async function start() {
  const began = performance.now();
  const provider = await pickProvider();
  const ort = await loadRuntime(provider);
  ort.env.wasm.wasmPaths = here("../runtime/");
  // Threads need a cross-origin isolated page (SharedArrayBuffer); a plain static host is not.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const [tokenizer, session, index] = await Promise.all([
    fetchOk(here("../model/tokenizer.json")).then((r) => r.json()).then(WordPiece.fromJSON),
    ort.InferenceSession.create(here("../model/model.onnx"), { executionProviders: [provider] }),
    loadIndex(),
  ]);
  const maxTokens = index.meta.max_tokens;
  const dim = index.meta.dimension;

  /** The question's unit vector (mean over tokens, L2-normalised: rag.embed's recipe). */
  async function embed(text) {
    const t0 = performance.now();
    const ids = tokenizer.encode(text, maxTokens);
    const n = ids.length;
    const tensor = (values) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), [1, n]);
    const feeds = { input_ids: tensor(ids), attention_mask: tensor(ids.map(() => 1)), token_type_ids: tensor(ids.map(() => 0)) };
    const wanted = Object.fromEntries(session.inputNames.map((name) => [name, feeds[name]]));
    const { last_hidden_state: hidden } = await session.run(wanted);
    const data = await hidden.getData();
    const vector = new Float32Array(dim);
    for (let t = 0; t < n; t++) for (let d = 0; d < dim; d++) vector[d] += data[t * dim + d] / n;
    const norm = Math.hypot(...vector) || 1;
    for (let d = 0; d < dim; d++) vector[d] /= norm;
    return { vector, ms: performance.now() - t0 };
  }

  /** The `k` passages nearest to the question by cosine, best first, with timings. */
  async function search(text, k = 5) {
    const { vector, ms: embedMs } = await embed(text);
    const t0 = performance.now();
    const rows = index.vectors;
    const scores = new Float32Array(index.meta.count);
    for (let row = 0, base = 0; row < scores.length; row++, base += dim) {
      let dot = 0;
      for (let d = 0; d < dim; d++) dot += vector[d] * rows[base + d];
      scores[row] = dot;
    }
    const hits = topK(scores, k).map((row) => ({ ...index.meta.passages[row], score: scores[row] }));
    return { hits, embedMs, rankMs: performance.now() - t0 };
  }

  return { provider, embed, search, count: index.meta.count, loadMs: performance.now() - began };
}

function chatLink(text) {
  const chat = document.body.dataset.chat;
  if (!chat) return null;
  const link = document.createElement("a");
  link.className = "ask";
  // Chainlit puts a ?prompt= into its input box, ready to send.
  link.href = `${chat}?prompt=${encodeURIComponent(text)}`;
  link.textContent = "ask about this";
  return link;
}

function show(hits, question) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of hits) {
    const item = document.createElement("li");
    item.className = "result";
    const where = document.createElement("div");
    where.className = "where";
    where.innerHTML = `<span class="file"></span><span class="page"></span><span class="score"></span>`;
    where.querySelector(".file").textContent = hit.source;
    where.querySelector(".page").textContent = hit.page ? `page ${hit.page}` : "";
    where.querySelector(".score").textContent = hit.score.toFixed(3);
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = hit.text;
    item.append(where, text);
    const link = chatLink(question);
    if (link) item.append(link);
    list.append(item);
  }
}

const ready = start();
window.ragSearch = { ready };
ready.then(
  (engine) => {
    Object.assign(window.ragSearch, engine);
    $("status").textContent =
      `Ready: ${engine.count} passages, model on ${engine.provider} (loaded in ${(engine.loadMs / 1000).toFixed(1)} s).`;
    $("status").dataset.provider = engine.provider;
    $("ask").disabled = false;
  },
  (err) => {
    $("status").textContent = err.message;
    $("status").dataset.error = "true";
  },
);

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("q").value.trim();
  if (!question) return;
  const engine = await ready;
  const { hits, embedMs, rankMs } = await engine.search(question, 5);
  show(hits, question);
  $("timing").textContent =
    `Question embedded on ${engine.provider} in ${embedMs.toFixed(0)} ms; ${engine.count} passages ranked in ${rankMs.toFixed(0)} ms.`;
});
