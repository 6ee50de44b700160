// core is two things in one package: the compute substrate (src/compute/: backend choice, kernels,
// native addon loader, wasm heap, threads) and the language-model library (everything else in
// src/: model, io, tokenizer, data, train, track, config). The arrow points one way: the library
// may import compute/ (through its faces backend.ts and ops.ts: the model calls a kernel by op
// name, never by file), compute/ imports only itself and errors.ts (a leaf that imports nothing).
// This test reads every import specifier in src/ and fails on an arrow the other way.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'src');
const COMPUTE = path.join(SRC, 'compute');
const LEAF = path.join(SRC, 'errors.ts');

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? tsFiles(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []);
}

/** Relative import specifiers (static `from '…'`, `import '…'` and dynamic `import('…')`) resolved to .ts paths. */
function relativeImports(file: string, text: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
  for (const m of text.matchAll(re)) out.push(path.resolve(path.dirname(file), m[1]!.replace(/\.js$/, '.ts')));
  return out;
}

const inside = (file: string, dir: string) => !path.relative(dir, file).startsWith('..');

test('the import scanner sees static, side-effect and dynamic imports', (t) => {
  const f = path.join(COMPUTE, 'x.ts');
  const seen = relativeImports(f, `import { a } from '../model/llama.js';\nimport '../io/index.js';\n` +
    `const m = await import('./kernels/setup.js');\nexport * from "../tokenizer.js";\nimport x from 'node:fs';`);
  t.deepEqual(seen.map((s) => path.relative(SRC, s)), ['model/llama.ts', 'io/index.ts', 'compute/kernels/setup.ts', 'tokenizer.ts']);
});

test('compute/ imports nothing from the language-model library (only itself and errors.ts)', (t) => {
  const files = tsFiles(COMPUTE);
  t.true(files.length > 5, `found ${files.length} files under ${COMPUTE}`);
  const bad: string[] = [];
  for (const f of files) {
    for (const target of relativeImports(f, readFileSync(f, 'utf8'))) {
      if (!inside(target, COMPUTE) && target !== LEAF) bad.push(`${path.relative(SRC, f)} → ${path.relative(SRC, target)}`);
    }
  }
  t.deepEqual(bad, [], 'compute/ must not import the LM library');
});

test('the library reaches compute/ only through its faces (backend.ts, ops.ts), never a kernel file', (t) => {
  const faces = ['backend.ts', 'ops.ts'].map((f) => path.join(COMPUTE, f));
  const bad: string[] = [];
  for (const f of tsFiles(SRC).filter((x) => !inside(x, COMPUTE))) {
    for (const target of relativeImports(f, readFileSync(f, 'utf8'))) {
      if (inside(target, COMPUTE) && !faces.includes(target)) bad.push(`${path.relative(SRC, f)} → ${path.relative(SRC, target)}`);
    }
  }
  t.deepEqual(bad, []);
});

test('errors.ts, shared by both sides, imports nothing relative', (t) => {
  t.deepEqual(relativeImports(LEAF, readFileSync(LEAF, 'utf8')), []);
});
