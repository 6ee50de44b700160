#!/usr/bin/env node
// Runs the AVA suite with a TAP reporter, echoes it, keeps a copy in .tap/report.tap, and ends
// with the one plain line CI reads: "N passed, N failed, N skipped". Extra arguments go to AVA.
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';

const args = ['ava', '--tap', ...process.argv.slice(2)];
const child = spawn('npx', args, { stdio: ['ignore', 'pipe', 'inherit'] });
let tap = '';
child.stdout.on('data', (chunk) => {
  tap += chunk;
  process.stdout.write(chunk);
});
child.on('close', (code) => {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for (const line of tap.split('\n')) {
    const m = /^(not ok|ok)\b(.*)$/.exec(line);
    if (!m) continue;
    if (/#\s*(SKIP|TODO)\b/i.test(m[2])) skipped++;
    else if (m[1] === 'ok') passed++;
    else failed++;
  }
  mkdirSync('.tap', { recursive: true });
  writeFileSync('.tap/report.tap', tap);
  // AVA can exit non-zero without a "not ok" line (e.g. a file that failed to load): count it.
  if (code !== 0 && failed === 0) failed = 1;
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  process.exit(failed > 0 ? 1 : 0);
});
