import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '@qrlhf/core';

/** configs/figure3-world2.json is configs/figure3.json in another world: only the seeds of the world and the models (and out, "//") differ. */
test('figure3-world2 differs from figure3 in the world and model seeds only', (t) => {
  const read = (f: string) => JSON.parse(readFileSync(join(repoRoot(), 'configs', f), 'utf8')) as Record<string, any>;
  const a = read('figure3.json');
  const b = read('figure3-world2.json');
  const seeds = [['world'], ['pretrain'], ['sft'], ['qrm', 'fit'], ['qrm', 'gate']];
  for (const path of seeds) {
    const at = (o: Record<string, any>) => path.reduce((x, k) => x[k], o);
    t.not(at(b)['seed'], at(a)['seed'], `${path.join('.')}.seed is changed`);
    at(b)['seed'] = at(a)['seed'];
  }
  for (const k of ['//', 'out']) b[k] = a[k];
  t.deepEqual(b, a, 'every other value as in configs/figure3.json');
});
