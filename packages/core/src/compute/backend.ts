import * as tf from '@tensorflow/tfjs';
import { createRequire } from 'node:module';
import { QrlhfError } from '../errors.js';
import { describeAdapter, setupWebgpu, webgpuAdapter } from './webgpu.js';

export type BackendName = 'auto' | 'tensorflow-gpu' | 'webgpu' | 'tensorflow' | 'wasm' | 'cpu';
/** Every --backend value; auto tries the others in this order (webgpu only on a hardware adapter). */
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'];

export interface BackendChoice {
  /** The qrlhf name of the backend in use. */
  name: Exclude<BackendName, 'auto'>;
  /** tfjs's own name for it (tensorflow, webgpu, wasm, cpu). */
  tfName: string;
  /** One line: what was chosen and why the better ones were not. */
  reason: string;
}

const require = createRequire(import.meta.url);
let current: BackendChoice | null = null;

// tfjs's cpu backend greets its first tensor in Node with a banner ("Hi, looks like you are running
// TensorFlow.js in Node.js ... install our node backend") on stderr, also where qrlhf computes
// nothing on it (qrm fit) or chose it on purpose; initBackend says which backend runs and why, so
// the banner is marked as already shown before any tensor exists. That instance must stay the one
// in use until initBackend picks another (tfjs would build a fresh one on its first tensor), so it
// is made current: what tfjs in Node would choose by itself anyway (webgl does not load there).
silenceCpuBanner();
function silenceCpuBanner(): void {
  try {
    const cpu = tf.findBackend('cpu') as { firstUse?: boolean } | null;
    if (!cpu || typeof cpu.firstUse !== 'boolean') return;
    cpu.firstUse = false;
    if (tf.getBackend() === undefined) void tf.setBackend('cpu'); // synchronous for an initialised backend
  } catch {
    // no cpu backend registered: no banner either
  }
}

async function tryNode(pkg: string): Promise<string | null> {
  try {
    require(pkg);
    return null;
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0]! : String(e);
    return msg.includes('Cannot find module') ? 'not installed' : `failed to load (${msg})`;
  }
}

async function activate(tfName: string): Promise<boolean> {
  try {
    const ok = await tf.setBackend(tfName);
    await tf.ready();
    return ok;
  } catch {
    return false;
  }
}

/**
 * Chooses and initialises the tfjs backend: auto takes tensorflow-gpu > webgpu (on a hardware
 * adapter only) > tensorflow > wasm > cpu, the first that loads. Prints one line on stderr saying
 * which, on which GPU adapter, and why the better ones were not taken (unless quiet).
 */
export async function initBackend(
  requested: BackendName = 'auto',
  opts: { quiet?: boolean } = {},
): Promise<BackendChoice> {
  if (!BACKEND_NAMES.includes(requested)) {
    throw new QrlhfError(`--backend: expected one of ${BACKEND_NAMES.join(', ')}, got "${requested}"`);
  }
  if (current && (requested === 'auto' || requested === current.name)) return current;
  const skipped: string[] = [];
  const order: Exclude<BackendName, 'auto'>[] =
    requested === 'auto' ? (BACKEND_NAMES.filter((n) => n !== 'auto') as Exclude<BackendName, 'auto'>[]) : [requested];
  for (const name of order) {
    let why: string | null = null;
    let tfName = name as string;
    if (name === 'tensorflow-gpu' || name === 'tensorflow') {
      why = await tryNode(name === 'tensorflow-gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node');
      tfName = 'tensorflow';
    } else if (name === 'wasm') {
      const { setupWasm } = await import('./kernels/setup.js');
      why = await setupWasm();
    } else if (name === 'webgpu') {
      why = await setupWebgpu(requested === 'webgpu');
    }
    if (why === null && name !== 'webgpu' && !(await activate(tfName))) why = 'did not initialise';
    if (why === null) {
      let detail = '';
      if (name === 'wasm') {
        const { wasmInfo } = await import('./kernels/setup.js');
        const w = wasmInfo();
        const nat = w.native.active
          ? `, native ${w.native.arch} products on ${w.native.threads} thread${w.native.threads === 1 ? '' : 's'}`
          : w.kernels ? `, native products off: ${w.native.note}` : '';
        detail = `, ${w.threads} thread${w.threads === 1 ? '' : 's'}${w.kernels ? '' : ', stock kernels'}${nat}` +
          (w.note ? ` [${w.note}]` : '');
      } else if (name === 'webgpu') {
        detail = ` on ${describeAdapter(webgpuAdapter()!)}`;
      }
      const reason =
        `backend: ${name}${detail}` + (skipped.length ? ` (${skipped.join('; ')})` : requested === 'auto' ? '' : ' (requested)');
      current = { name, tfName, reason };
      if (!opts.quiet) process.stderr.write(reason + '\n');
      return current;
    }
    if (requested !== 'auto') throw new QrlhfError(`--backend ${name}: ${why}`);
    skipped.push(`${name} ${why}`);
  }
  throw new QrlhfError(`no tfjs backend could be initialised: ${skipped.join('; ')}`);
}

/** The backend chosen by initBackend, or null before it ran. */
export function currentBackend(): BackendChoice | null {
  return current;
}

/** The GPU adapter webgpu found (also when auto passed it over), or null. */
export { webgpuAdapter, type WebgpuAdapter } from './webgpu.js';

/** How the wasm backend runs (threads, kernels); see kernels/setup.ts. */
export { wasmInfo, type WasmInfo } from './kernels/setup.js';
