#!/usr/bin/env node
// Runs the built CLI (dist/) when present, else the TypeScript sources through tsx.
// The workspace packages point their exports at src/ only under the "source" condition (what
// `node --conditions=source` sets); a checkout after `npm ci` has no dist/, so the fallback adds
// that condition with a resolve hook of its own, registered after tsx's so that it runs first.
// QRLHF_FROM_SOURCE=1 takes the sources even when a build exists (a stale dist/ while developing).
import { existsSync } from 'node:fs';
import { register } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const built = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
if (existsSync(built) && !process.env.QRLHF_FROM_SOURCE) {
  await import(pathToFileURL(built).href);
} else {
  const { register: registerTsx } = await import('tsx/esm/api');
  registerTsx();
  register(new URL('./source-condition.js', import.meta.url));
  await import(new URL('../src/bin.ts', import.meta.url).href);
}
