#!/usr/bin/env node
/**
 * Builds qrlhf's native kernels (qrlhf_native.c) into build/qrlhf_native.node with the system's
 * C compiler and Node's own headers. Runs after `npm ci` (root postinstall) and in `npm run build`.
 * Never fails the install: without a compiler or headers it says so in one line and qrlhf uses its
 * wasm kernels. Options: --strict (exit 1 when the build is impossible or fails), --force
 * (rebuild even if up to date). Environment: CC (compiler), QRLHF_NODE_HEADERS (folder holding
 * node_api.h).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const source = path.join(here, 'qrlhf_native.c');
const outDir = path.join(here, 'build');
const out = path.join(outDir, 'qrlhf_native.node');
const stampFile = path.join(outDir, 'stamp.txt');
const strict = process.argv.includes('--strict');
const force = process.argv.includes('--force');

function give(reason) {
  const line = `qrlhf: native kernels not built (${reason}); the wasm kernels will be used`;
  if (strict) {
    console.error(line);
    process.exit(1);
  }
  console.warn(line);
  process.exit(0);
}

function headerDir() {
  const candidates = [];
  if (process.env.QRLHF_NODE_HEADERS) candidates.push(process.env.QRLHF_NODE_HEADERS);
  if (process.env.npm_config_nodedir) candidates.push(path.join(process.env.npm_config_nodedir, 'include', 'node'));
  candidates.push(path.resolve(path.dirname(process.execPath), '..', 'include', 'node'));
  const prefix = process.config?.variables?.node_prefix;
  if (typeof prefix === 'string') candidates.push(path.join(prefix, 'include', 'node'));
  const home = process.env.HOME ?? process.env.USERPROFILE;
  if (home) {
    const v = process.version.slice(1);
    candidates.push(path.join(home, '.cache', 'node-gyp', v, 'include', 'node'));
    candidates.push(path.join(home, '.node-gyp', v, 'include', 'node'));
  }
  return candidates.find((d) => existsSync(path.join(d, 'node_api.h'))) ?? null;
}

function compiler() {
  const list = process.env.CC ? [process.env.CC] : ['cc', 'gcc', 'clang'];
  for (const cc of list) {
    try {
      execFileSync(cc, ['--version'], { stdio: 'ignore' });
      return cc;
    } catch {
      /* next */
    }
  }
  return null;
}

if (process.platform === 'win32') give('Windows builds are not supported yet');
const headers = headerDir();
if (!headers) give(`Node's headers (node_api.h) not found; set QRLHF_NODE_HEADERS to their folder`);
const cc = compiler();
if (!cc) give('no C compiler found (cc, gcc, clang; or set CC)');

const flags = ['-O3', '-std=gnu11', '-fPIC', '-pthread', '-Wall', `-I${headers}`];
const link = process.platform === 'darwin' ? ['-bundle', '-undefined', 'dynamic_lookup'] : ['-shared'];
const stamp = createHash('sha256')
  .update(readFileSync(source))
  .update(JSON.stringify([cc, flags, link, process.versions.napi, process.arch]))
  .digest('hex');
if (!force && existsSync(out) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) process.exit(0);

mkdirSync(outDir, { recursive: true });
const tmp = `${out}.${process.pid}.tmp`;
try {
  execFileSync(cc, [...flags, ...link, source, '-o', tmp], { stdio: ['ignore', 'inherit', 'pipe'] });
} catch (e) {
  const err = e && typeof e === 'object' && 'stderr' in e && e.stderr ? String(e.stderr).trim().split('\n').slice(0, 5).join(' | ') : String(e);
  give(`${cc} failed: ${err}`);
}
renameSync(tmp, out);
writeFileSync(stampFile, stamp);
console.log(`qrlhf: native kernels built (${path.relative(process.cwd(), out)})`);
