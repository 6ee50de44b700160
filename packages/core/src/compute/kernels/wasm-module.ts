/**
 * Loads the wasm module that tfjs-backend-wasm ships, on more than one thread in Node.
 *
 * Why this exists: tfjs turns its multithreading flag off in Node, and forcing it on fails,
 * because the threaded build hands its pthread workers a `blob:` URL that Node's worker_threads
 * cannot load. The package does ship everything needed, as files: the emscripten glue
 * (`wasm-out/tfjs-backend-wasm-threaded-simd.js`, CommonJS), the threaded SIMD binary, and the
 * pthread worker's source (exported as a string). This module starts that glue itself:
 *  - the pthread workers get a small ES-module `data:` URL of our own that defines the two
 *    CommonJS names the worker source needs (`require`, `__filename`) on the *worker's* global and
 *    then evaluates tfjs's worker source; the worker imports the glue by its real path;
 *  - the binary is instantiated by us (`instantiateWasm`) so that the number of logical cores the
 *    module sees is 2 × the wanted thread count: tfjs's C++ caps XNNPACK's pool at half of it
 *    (it assumes hyperthreading);
 *  - what the emscripten glue does to the process is undone right after it ran: it assigns
 *    `globalThis.Worker` and adds `uncaughtException` / `unhandledRejection` listeners that
 *    rethrow; both are removed, so no other code sees a changed global;
 *  - the pthread workers are `unref()`ed once the pool is up (they wait on a futex forever) and
 *    the spare pre-spawned workers are terminated, so the process still exits by itself.
 * The result is a module object the stock `BackendWasm` class accepts.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

// The few WebAssembly JS-API types used here (tsconfig's lib has no WebAssembly namespace).
interface WasmMemory { buffer: ArrayBufferLike }
type WasmInstance = object;
type WasmCompiled = object;
declare const WebAssembly: {
  instantiate(bytes: Uint8Array, imports: object): Promise<{ instance: WasmInstance; module: WasmCompiled }>;
};

/** The subset of the emscripten module object that qrlhf uses. */
export interface WasmModuleLike {
  HEAPU8: Uint8Array;
  wasmMemory?: WasmMemory;
  _malloc(n: number): number;
  _free(p: number): void;
  cwrap(name: string, ret: string | null, args: string[]): (...a: unknown[]) => unknown;
  tfjs: {
    init(): void;
    initWithThreadsCount(n: number): void;
    getThreadsCount(): number;
    registerTensor(id: number, size: number, offset: number): void;
    disposeData(id: number): void;
    dispose(): void;
  };
  PThread?: { runningWorkers: NodeWorker[]; unusedWorkers: NodeWorker[] };
  /** Heap address of tfjs's C++ `threadpool` pointer (threaded build; see threadpoolSlot). */
  qrlhfPoolSlot?: number | null;
}
interface NodeWorker {
  unref(): void;
  terminate(): unknown;
}

type GlueFactory = (cfg: Record<string, unknown>) => Promise<WasmModuleLike>;

export function wasmPackageDir(): string {
  return path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json'));
}

function addTfjsBridge(m: WasmModuleLike): void {
  const w = m.cwrap.bind(m);
  m.tfjs = {
    init: w('init', null, []) as () => void,
    initWithThreadsCount: w('init_with_threads_count', null, ['number']) as (n: number) => void,
    getThreadsCount: w('get_threads_count', 'number', []) as () => number,
    registerTensor: w('register_tensor', null, ['number', 'number', 'number']) as (a: number, b: number, c: number) => void,
    disposeData: w('dispose_data', null, ['number']) as (id: number) => void,
    dispose: w('dispose', null, []) as () => void,
  };
}

/**
 * Starts the threaded SIMD module with `threads` XNNPACK threads (the calling thread counts as
 * one), or with threads = 1 the single-threaded SIMD module. Rejects with a reason when it cannot (no SharedArrayBuffer, missing files, ...).
 */
export async function loadThreadedWasm(threads: number, timeoutMs = 30_000): Promise<WasmModuleLike> {
  const threaded = threads > 1;
  if (threaded && typeof SharedArrayBuffer === 'undefined') throw new Error('SharedArrayBuffer is not available');
  const outDir = path.join(wasmPackageDir(), 'wasm-out');
  // One thread: the single-threaded glue with the SIMD binary (what tfjs itself loads in Node).
  const glue = path.join(outDir, threaded ? 'tfjs-backend-wasm-threaded-simd.js' : 'tfjs-backend-wasm.js');
  const binary = path.join(outDir, threaded ? 'tfjs-backend-wasm-threaded-simd.wasm' : 'tfjs-backend-wasm-simd.wasm');
  const workerSource = path.join(outDir, 'tfjs-backend-wasm-threaded-simd.worker.js');
  for (const f of [glue, binary, workerSource]) if (!fs.existsSync(f)) throw new Error(`missing ${f}`);

  // The pthread worker's entry: runs in the worker thread only. tfjs's worker source is a JS
  // string inside a template literal, so its "\n" escapes arrive as real newlines and must be
  // escaped again before evaluation (tfjs does the same before making its blob).
  const entry = [
    `import { createRequire } from 'node:module';`,
    `const req = createRequire(${JSON.stringify(glue)});`,
    `globalThis.require = req;`,
    `globalThis.__filename = ${JSON.stringify(glue)};`,
    `const { wasmWorkerContents } = req(${JSON.stringify(workerSource)});`,
    `(0, eval)(wasmWorkerContents.replace(/\\n/g, '\\\\n'));`,
  ].join('\n');
  const workerUrl = new URL('data:text/javascript,' + encodeURIComponent(entry));

  const factory = require(glue) as GlueFactory;
  const bytes = fs.readFileSync(binary);
  const workerBefore = Object.getOwnPropertyDescriptor(globalThis, 'Worker');
  const listenersBefore = {
    uncaughtException: process.listeners('uncaughtException'),
    unhandledRejection: process.listeners('unhandledRejection'),
  };
  let failInstantiate: (e: unknown) => void = () => {};
  const instantiateFailed = new Promise<never>((_, reject) => (failInstantiate = reject));
  let ready: Promise<WasmModuleLike>;
  try {
    ready = factory({
      locateFile: (p: string, prefix: string) => (p.endsWith('.worker.js') ? workerUrl : prefix + p),
      instantiateWasm: (
        imports: { env: Record<string, unknown> },
        receive: (i: WasmInstance, m: WasmCompiled) => void,
      ) => {
        if (threaded) imports.env['emscripten_num_logical_cores'] = () => 2 * threads;
        WebAssembly.instantiate(bytes, imports).then(
          (r) => receive(r.instance, r.module),
          (e: unknown) => failInstantiate(e),
        );
        return {};
      },
      print: (s: string) => process.stdout.write(s + '\n'),
      printErr: (s: string) => process.stderr.write(s + '\n'),
    });
  } finally {
    // Undo the glue's process-wide side effects (it ran synchronously up to here).
    if (workerBefore) Object.defineProperty(globalThis, 'Worker', workerBefore);
    else delete (globalThis as { Worker?: unknown }).Worker;
    for (const ev of ['uncaughtException', 'unhandledRejection'] as const) {
      const before = listenersBefore[ev] as unknown[];
      for (const l of process.listeners(ev as 'uncaughtException')) {
        if (!before.includes(l)) process.removeListener(ev as 'uncaughtException', l);
      }
    }
  }
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`threaded wasm did not start within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
  });
  try {
    const m = await Promise.race([ready, instantiateFailed, timeout]);
    addTfjsBridge(m);
    m.qrlhfPoolSlot = threaded ? threadpoolSlot(bytes) : null;
    return m;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Finds the heap address of the C++ global `tfjs::backend::threadpool` in a threaded binary: the
 * exported `get_threads_count` begins by loading it (`i32.const A; i32.load offset=O`). Returns
 * null when the code does not look like that. Callers must verify the address at run time
 * (pool.ts does: writing 0 there must make get_threads_count() return -1).
 */
export function threadpoolSlot(bytes: Uint8Array): number | null {
  let p = 8;
  const leb = (): number => {
    let r = 0, s = 0, x: number;
    do {
      x = bytes[p++]!;
      r += (x & 0x7f) * 2 ** s;
      s += 7;
    } while (x & 0x80);
    return r;
  };
  const skipLimits = (): void => {
    const f = bytes[p++]!;
    leb();
    if (f & 1) leb();
  };
  let importedFuncs = 0;
  let fn = -1;
  let code = -1;
  while (p < bytes.length) {
    const id = bytes[p++]!;
    const size = leb();
    const end = p + size;
    if (id === 2) {
      const n = leb();
      for (let i = 0; i < n; i++) {
        const moduleLen = leb();
        p += moduleLen;
        const nameLen = leb();
        p += nameLen;
        const kind = bytes[p++]!;
        if (kind === 0) {
          leb();
          importedFuncs++;
        } else if (kind === 1) {
          p++;
          skipLimits();
        } else if (kind === 2) skipLimits();
        else if (kind === 3) p += 2;
        else return null;
      }
    } else if (id === 7) {
      const n = leb();
      for (let i = 0; i < n; i++) {
        const l = leb();
        const name = Buffer.from(bytes.subarray(p, p + l)).toString('utf8');
        p += l;
        const kind = bytes[p++]!;
        const idx = leb();
        if (kind === 0 && name === 'get_threads_count') fn = idx;
      }
    } else if (id === 10) code = p;
    p = end;
  }
  if (fn < importedFuncs || code < 0) return null;
  p = code;
  const n = leb();
  for (let i = 0; i < n; i++) {
    const size = leb();
    if (i !== fn - importedFuncs) {
      p += size;
      continue;
    }
    const end = p + size;
    const groups = leb();
    for (let g = 0; g < groups; g++) {
      leb();
      p++;
    }
    if (bytes[p] !== 0x41) return null; // i32.const
    p++;
    const base = leb();
    if (bytes[p] !== 0x28) return null; // i32.load
    p++;
    leb(); // align
    const offset = leb();
    return p <= end ? base + offset : null;
  }
  return null;
}

/**
 * After the XNNPACK pool exists: terminates the pre-spawned workers it does not use and unrefs
 * the ones it runs on, so that they do not keep the event loop (and the process) alive.
 */
export function releaseIdleWorkers(m: WasmModuleLike): void {
  const p = m.PThread;
  if (!p) return;
  for (const w of p.unusedWorkers.splice(0)) void w.terminate();
  for (const w of p.runningWorkers) w.unref();
}
