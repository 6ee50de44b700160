/**
 * Prepares the wasm backend: loads it and registers qrlhf's kernels on it (see kernels/index.ts).
 * Returns null on success, or why it could not be used.
 */
export async function setupWasm(): Promise<string | null> {
  try {
    await import('@tensorflow/tfjs-backend-wasm');
  } catch (e) {
    return `failed to load (${e instanceof Error ? e.message : String(e)})`;
  }
  const { registerWasmKernels } = await import('./index.js');
  registerWasmKernels();
  return null;
}
