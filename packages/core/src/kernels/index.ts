/**
 * Every kernel qrlhf registers on (or replaces in) a tfjs backend, one file per kernel, all
 * registered from this one list.
 */
let registered = false;

export function registerWasmKernels(): void {
  if (registered) return;
  registered = true;
}
