import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfigFile, repoRoot } from '@qrlhf/core';
import { FIGURE3_SCHEMA } from '../experiments/figure3/config.js';

/** configs/figure3-world2.json is configs/figure3.json in another world: only the seeds of the world and the models (and out, "//") differ. */
test('figure3-world2 differs from figure3 in the world and model seeds only', (t) => {
  const read = (f: string) => JSON.parse(readFileSync(join(repoRoot(), 'configs', f), 'utf8')) as Record<string, any>;
  const a = read('figure3.json');
  const b = read('figure3-world2.json');
  const seeds = [['world'], ['pretrain'], ['sft'], ['policyRatings'], ['rewardBackbone'], ['qrm', 'fit'], ['qrm', 'gate']];
  for (const path of seeds) {
    const at = (o: Record<string, any>) => path.reduce((x, k) => x[k], o);
    t.not(at(b)['seed'], at(a)['seed'], `${path.join('.')}.seed is changed`);
    at(b)['seed'] = at(a)['seed'];
  }
  for (const k of ['//', 'out']) b[k] = a[k];
  t.deepEqual(b, a, 'every other value as in configs/figure3.json');
});

/**
 * The ablation of issue 13 item 7 compares configs/figure3-spec-path.json with configs/figure3.json:
 * it means something only while the two differ in SPEC's two choices and nothing else (the run
 * folder aside). Both files must also parse under the experiment's schema.
 */
function flat(o: unknown, prefix = ''): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o as Record<string, unknown>)) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) Object.assign(out, flat(v, `${prefix}${k}.`));
    else out[`${prefix}${k}`] = v;
  }
  return out;
}

test('figure3-spec-path.json is figure3.json with last-token features and the raw eq. 3 reward', (t) => {
  const base = flat(loadConfigFile(FIGURE3_SCHEMA, join(repoRoot(), 'configs', 'figure3.json')));
  const spec = flat(loadConfigFile(FIGURE3_SCHEMA, join(repoRoot(), 'configs', 'figure3-spec-path.json')));
  const differ = Object.keys({ ...base, ...spec }).filter((k) => JSON.stringify(base[k]) !== JSON.stringify(spec[k])).sort();
  t.deepEqual(differ, ['out', 'qrm.features.pooling', 'rloo.qrmNormalise']);
  t.like(spec, { 'qrm.features.pooling': 'last', 'rloo.qrmNormalise': 'none' });
  t.like(base, { 'qrm.features.pooling': 'max', 'rloo.qrmNormalise': 'kept-weight' });
});
