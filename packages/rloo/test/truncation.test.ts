/**
 * Issue 13, item 8: RLOO refuses truncated sampling (top-p < 1 or top-k > 0), whose samples would
 * come from a distribution other than the one its loss and KL are taken of. The refusal names the
 * setting and happens before any file of the run is written.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runRloo } from '../src/index.js';
import { smallConfig, stubReward, tmp, writePrompts, writeTinyPolicy } from './fixture.js';

const dir = tmp('trunc');
const policyP = writeTinyPolicy(join(dir, 'policy'));
const prompts = writePrompts(join(dir, 'prompts.jsonl'), 4);

for (const [over, named] of [
  [{ topP: 0.9 }, /topP 0\.9 \(must be 1\)/],
  [{ topK: 5 }, /topK 5 \(must be 0\)/],
  [{ topP: 0.5, topK: 3 }, /topP 0\.5 \(must be 1\) and topK 3 \(must be 0\)/],
] as const) {
  test(`runRloo refuses ${JSON.stringify(over)} with one error naming it, before writing anything`, async (t) => {
    const out = join(dir, `out-${Object.keys(over).join('-')}-${Object.values(over).join('-')}`);
    const err = await t.throwsAsync(runRloo(smallConfig({ policy: await policyP, prompts, out, steps: 1, ...over }), { reward: stubReward(), quiet: true }));
    t.regex(err!.message, named);
    t.regex(err!.message, /bias the gradient/);
    t.is(err!.constructor.name, 'QrlhfError');
    t.false(existsSync(join(out, 'config.json')));
  });
}

test('the full distribution (topP 1, topK 0) trains', async (t) => {
  const r = await runRloo(smallConfig({ policy: await policyP, prompts, out: join(dir, 'out-full'), steps: 1, topP: 1, topK: 0 }), { reward: stubReward(), quiet: true });
  t.is(r.steps, 1);
});
