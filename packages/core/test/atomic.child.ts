// Child process of atomic.test.ts: writeDirAtomic(argv[2]) with files a.txt = b.txt = argv[3]
// (a folder is complete when both hold the same tag), SIGKILLed right after step argv[4]
// ("none": runs to the end).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeDirAtomic } from '../src/io/atomic.js';

const [dir, tag, killAt] = process.argv.slice(2) as [string, string, string];
await writeDirAtomic(
  dir,
  (tmp) => {
    writeFileSync(join(tmp, 'a.txt'), tag);
    writeFileSync(join(tmp, 'b.txt'), tag);
  },
  { onStep: (s) => s === killAt && process.kill(process.pid, 'SIGKILL') },
);
