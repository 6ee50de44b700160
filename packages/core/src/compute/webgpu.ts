/**
 * The webgpu backend in Node: TensorFlow.js's own WebGPU backend on Dawn (the `webgpu` npm
 * package, Google's WebGPU implementation as a Node addon), which drives the GPU through Vulkan
 * (Metal on macOS, D3D12 on Windows). No CUDA/cuDNN version to match, unlike tfjs-node-gpu.
 *
 * Why it needs care (measured, docs/PERF-NOTES.md):
 * - tfjs-backend-webgpu registers itself at import only if `navigator.gpu` exists, and its factory
 *   asks `navigator.gpu` for the adapter when the backend is first set. Node 20 has no
 *   `navigator`: we lend one (`{ gpu }` from Dawn's `create([])`) for the import and the
 *   `setBackend` call, then take it back. The backend reads a few WebGPU constants
 *   (GPUBufferUsage, GPUMapMode, …) as globals while it runs: those, and only those, stay.
 * - `tf.setBackend('webgpu')` returns false when no adapter is found (while `tf.getBackend()`
 *   still names it): the return value is what counts.
 * - Without a Vulkan driver Dawn finds no adapter. `. scripts/webgpu-env.sh` provides a software
 *   one (Mesa's lavapipe); a software adapter is used only when webgpu is asked for by name.
 * - Synchronous reads (dataSync/arraySync) throw on GPU tensors: read with `await t.data()`.
 */
import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

/** What Dawn reported about the adapter it would use. */
export interface WebgpuAdapter {
  vendor: string;
  architecture: string;
  description: string;
  /** A CPU emulating a GPU (lavapipe, SwiftShader): correct but slow. */
  software: boolean;
}

/** The WebGPU constants tfjs-backend-webgpu 4.22 reads as globals at run time. */
const RUNTIME_GLOBALS = ['GPUBuffer', 'GPUBufferUsage', 'GPUMapMode', 'GPUTexture', 'GPUTextureUsage', 'GPUExternalTexture'];

let adapterSeen: WebgpuAdapter | null = null;
/**
 * Dawn's GPU instance, held for the life of the process: the backend's device does not keep it
 * alive, and once navigator.gpu is taken back nothing else does. Collected, Dawn's event loop
 * still calls into it (measured: a crash in InstanceBase::ProcessEvents after the first GC).
 */
let instance: unknown = null;

/** The adapter found by the last setupWebgpu call, or null. */
export function webgpuAdapter(): WebgpuAdapter | null {
  return adapterSeen;
}

export function describeAdapter(a: WebgpuAdapter): string {
  const parts = [a.vendor || 'unknown vendor', a.architecture || 'unknown architecture'];
  if (a.description) parts.push(`"${a.description}"`);
  return parts.join(' ') + (a.software ? ', a software GPU' : '');
}

interface DawnModule {
  create(flags: string[]): { requestAdapter(o?: object): Promise<DawnAdapter | null> };
  globals: Record<string, unknown>;
}
interface DawnAdapter {
  info: { vendor: string; architecture: string; description: string; device: string };
  isFallbackAdapter?: boolean;
}

/**
 * auto's look at the adapter, in a child process: opening a Vulkan adapter makes Dawn print
 * warnings on stderr (two lines on lavapipe), which would break the one-line stderr contract of
 * every command run with auto. Returns the adapter, null when there is none, or why it could not
 * tell (a string).
 */
function probeAdapter(): WebgpuAdapter | null | string {
  let entry: string;
  try {
    entry = pathToFileURL(createRequire(import.meta.url).resolve('webgpu')).href;
  } catch {
    return 'not installed (optional dependency webgpu)';
  }
  const code =
    `const { create } = await import(${JSON.stringify(entry)});` +
    `const a = await create([]).requestAdapter({ powerPreference: 'high-performance' });` +
    `process.stdout.write(JSON.stringify(a ? { vendor: a.info.vendor, architecture: a.info.architecture, description: a.info.description || a.info.device || '', device: a.info.device || '', fallback: a.isFallbackAdapter === true } : null) + '\\n');`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 30_000 });
  const line = (r.stdout ?? '').trim().split('\n').pop() ?? '';
  try {
    const x = JSON.parse(line) as { vendor: string; architecture: string; description: string; device: string; fallback: boolean } | null;
    if (x === null) return null;
    return { vendor: x.vendor, architecture: x.architecture, description: x.description, software: isSoftware(x.architecture, x.fallback, `${x.description} ${x.device}`) };
  } catch {
    return `could not probe the adapter (${r.error?.message ?? (r.stderr ?? '').trim().split('\n').pop() ?? `exit ${r.status}`})`;
  }
}

function isSoftware(architecture: string, fallback: boolean, text: string): boolean {
  return architecture === 'software' || fallback || /llvmpipe|lavapipe|swiftshader|softpipe/i.test(text);
}

/**
 * Loads Dawn, looks for an adapter and, if it is acceptable, makes webgpu the tfjs backend.
 * Returns null on success, else why not (one phrase). A software adapter is refused unless
 * allowSoftware (auto must not pick a CPU emulating a GPU over the real CPU backends).
 */
export async function setupWebgpu(allowSoftware: boolean): Promise<string | null> {
  if (!allowSoftware) {
    // auto: decide from a quiet probe; only a hardware adapter is opened in this process.
    const p = probeAdapter();
    if (typeof p === 'string') return p;
    adapterSeen = p;
    if (p === null) return 'found no GPU adapter (no Vulkan driver; `. scripts/webgpu-env.sh` gives a software one)';
    if (p.software) return `found only a software adapter (${describeAdapter(p)}; used only with --backend webgpu)`;
  }
  let dawn: DawnModule;
  try {
    dawn = (await import('webgpu')) as unknown as DawnModule;
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0]! : String(e);
    return /Cannot find (module|package)/.test(msg) ? 'not installed (optional dependency webgpu)' : `failed to load Dawn (${msg})`;
  }
  const gpu = dawn.create([]);
  instance = gpu;
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) {
    adapterSeen = null;
    return 'found no GPU adapter (no Vulkan driver; `. scripts/webgpu-env.sh` gives a software one)';
  }
  const info = adapter.info;
  const desc = info.description || info.device || '';
  const found: WebgpuAdapter = {
    vendor: info.vendor,
    architecture: info.architecture,
    description: desc,
    software: isSoftware(info.architecture, adapter.isFallbackAdapter === true, `${desc} ${info.device}`),
  };
  adapterSeen = found;
  if (found.software && !allowSoftware) {
    return `found only a software adapter (${describeAdapter(found)}; used only with --backend webgpu)`;
  }
  const g = globalThis as Record<string, unknown>;
  for (const k of RUNTIME_GLOBALS) if (!(k in g) && k in dawn.globals) g[k] = dawn.globals[k];
  // Lend navigator.gpu for the import (registration) and setBackend (the factory), then take it back.
  const navDesc = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  const hadGpu = navDesc !== undefined && typeof g['navigator'] === 'object' && g['navigator'] !== null && 'gpu' in (g['navigator'] as object);
  if (!hadGpu) {
    Object.defineProperty(globalThis, 'navigator', { value: { ...(g['navigator'] ?? {}), gpu }, configurable: true, writable: true });
  }
  try {
    await import('@tensorflow/tfjs-backend-webgpu');
    if (!tf.findBackendFactory('webgpu')) return 'tfjs-backend-webgpu did not register (navigator.gpu missing at import)';
    let ok = false;
    try {
      ok = await tf.setBackend('webgpu');
      await tf.ready();
    } catch (e) {
      return `did not initialise (${e instanceof Error ? e.message.split('\n')[0] : String(e)})`;
    }
    return ok ? null : 'did not initialise (tf.setBackend returned false)';
  } finally {
    if (!hadGpu) {
      if (navDesc) Object.defineProperty(globalThis, 'navigator', navDesc);
      else delete g['navigator'];
    }
  }
}
