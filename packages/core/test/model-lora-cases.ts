/**
 * LoRA tests, run once per backend by model-lora.test.ts (cpu) and model-lora-wasm.test.ts (wasm).
 */
import type { TestFn } from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  QrlhfError,
  Rng,
  loadLoraAdapter,
  readSafetensors,
  saveLoraAdapter,
  withLoraDisabled,
  type LlamaModel,
  type LoraAdapter,
} from '@qrlhf/core';
import { loraFactors, mergedWeights, modelFrom, randomWeights, referenceLogits, relErr, smallConfig } from './model-reference.js';

const c = smallConfig();
const ids = [
  [1, 5, 9, 3, 17, 22, 4, 8],
  [1, 11, 2, 27, 6, 6, 13, 0],
];

function logits(model: LlamaModel): Float32Array {
  const x = tf.tensor2d(ids, undefined, 'int32');
  const out = model.forward(x);
  const data = out.dataSync() as Float32Array;
  tf.dispose([x, out]);
  return data;
}

/** Gives every B a random value (a fresh adapter's B is zero, which would hide A). */
function randomizeB(a: LoraAdapter, seed: number): void {
  const rng = new Rng(seed);
  for (const [k, v] of Object.entries(a.variables)) {
    if (k.endsWith('lora_B.weight')) {
      const data = Float32Array.from({ length: v.size }, () => 0.3 * rng.normal());
      tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
    }
  }
}

export function defineLoraTests(test: TestFn, label: string): void {
  test.serial(`${label}: a fresh adapter (B = 0) leaves the logits unchanged; A is uniform(±1/sqrt(in)) from the Rng`, (t) => {
    const w = randomWeights(c, 3);
    const model = modelFrom(c, w);
    const base = logits(model);
    const a = model.addLora({ r: 4, alpha: 8, dropout: 0, targetModules: 'all-linear' }, new Rng(1));
    t.deepEqual(Array.from(logits(model)), Array.from(base));
    t.is(Object.keys(a.variables).length, 2 * 7 * c.numLayers);
    const A = a.variables['base_model.model.model.layers.1.mlp.down_proj.lora_A.weight']!;
    const B = a.variables['base_model.model.model.layers.1.mlp.down_proj.lora_B.weight']!;
    t.deepEqual(A.shape, [4, c.intermediateSize]);
    t.deepEqual(B.shape, [c.hiddenSize, 4]);
    t.true(A.trainable && B.trainable);
    const av = A.dataSync();
    const bound = 1 / Math.sqrt(c.intermediateSize);
    t.true(av.every((x) => Math.abs(x) <= bound) && Math.max(...av.map(Math.abs)) > 0.8 * bound);
    t.true(B.dataSync().every((x) => x === 0));
    // The same seed draws the same A.
    const again = modelFrom(c, w);
    const a2 = again.addLora({ r: 4, alpha: 8, dropout: 0, targetModules: 'all-linear' }, new Rng(1));
    t.deepEqual(Array.from(a2.variables['base_model.model.model.layers.1.mlp.down_proj.lora_A.weight']!.dataSync()), Array.from(av));
    model.dispose();
    again.dispose();
  });

  test.serial(`${label}: unmerged LoRA, merged LoRA and the float64 W + (alpha/r) B A agree; disabling gives the base`, (t) => {
    const w = randomWeights(c, 4);
    const model = modelFrom(c, w);
    const base = logits(model);
    const a = model.addLora({ r: 3, alpha: 6, dropout: 0, targetModules: ['q_proj', 'v_proj', 'down_proj'] }, new Rng(2));
    t.is(Object.keys(a.variables).length, 2 * 3 * c.numLayers);
    randomizeB(a, 9);
    const ref = referenceLogits(c, w, ids, undefined, mergedWeights(w, loraFactors(a.variables), 2)).flat(2);
    const unmerged = logits(model);
    t.true(relErr(unmerged, ref) < 1e-4, `unmerged vs reference ${relErr(unmerged, ref)}`);
    t.true(relErr(base, ref) > 1e-2, 'the adapter changes the logits');
    const off = withLoraDisabled(model, () => logits(model));
    t.deepEqual(Array.from(off), Array.from(base));
    t.true(a.enabled);
    t.throws(() => withLoraDisabled(model, () => { throw new Error('inside'); }));
    t.true(a.enabled, 'restored after a throw');
    const before = tf.memory().numTensors;
    model.mergeLora();
    t.is(model.lora, null);
    t.is(tf.memory().numTensors, before - 2 * 3 * c.numLayers, 'the adapter variables are released');
    const merged = logits(model);
    t.true(relErr(merged, unmerged) < 1e-4, `merged vs unmerged ${relErr(merged, unmerged)}`);
    t.true(relErr(merged, ref) < 1e-4);
    model.dispose();
  });

  test.serial(`${label}: dropout acts only in training, reproducibly from the Rng`, (t) => {
    const w = randomWeights(c, 5);
    const run = (training: boolean, seed: number, dropout: number) => {
      const model = modelFrom(c, w);
      const a = model.addLora({ r: 2, alpha: 4, dropout, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] }, new Rng(seed));
      randomizeB(a, 1);
      const x = tf.tensor2d(ids, undefined, 'int32');
      const out = model.forward(x, { training });
      const data = Array.from(out.dataSync());
      tf.dispose([x, out]);
      model.dispose();
      return data;
    };
    const evalOut = run(false, 7, 0.5);
    t.deepEqual(run(true, 7, 0), evalOut);
    const tr = run(true, 7, 0.5);
    t.true(relErr(tr, evalOut) > 1e-3);
    t.deepEqual(run(true, 7, 0.5), tr);
  });

  test.serial(`${label}: an adapter saved in PEFT's layout loads back into the same logits`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'qrlhf-lora-'));
    try {
      const w = randomWeights(c, 6);
      const model = modelFrom(c, w);
      const a = model.addLora({ r: 2, alpha: 5, dropout: 0.05, targetModules: ['o_proj', 'q_proj', 'gate_proj'] }, new Rng(3));
      randomizeB(a, 2);
      const want = logits(model);
      await saveLoraAdapter(dir, a, 'tiny/base');
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      t.like(cfg, { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 2, lora_alpha: 5, lora_dropout: 0.05, bias: 'none', base_model_name_or_path: 'tiny/base' });
      t.deepEqual(cfg.target_modules, ['q_proj', 'o_proj', 'gate_proj']);
      const { tensors } = readSafetensors(join(dir, 'adapter_model.safetensors'));
      t.deepEqual(tensors['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight']!.shape, [2, c.hiddenSize]);
      t.deepEqual(tensors['base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight']!.shape, [c.intermediateSize, 2]);
      t.is(Object.keys(tensors).length, 2 * 3 * c.numLayers);

      const fresh = modelFrom(c, w);
      const loaded = loadLoraAdapter(dir, fresh);
      t.is(fresh.lora, loaded);
      t.is(loaded.scale, 2.5);
      t.deepEqual(Array.from(logits(fresh)), Array.from(want));

      // A file that does not fit the model is refused, naming the tensor.
      const other = modelFrom(smallConfig({ hiddenSize: 8, numHeads: 2, numKvHeads: 1 }), randomWeights(smallConfig({ hiddenSize: 8, numHeads: 2, numKvHeads: 1 }), 1));
      t.throws(() => loadLoraAdapter(dir, other), { instanceOf: QrlhfError, message: /adapter_model\.safetensors: ".*lora_A\.weight" has shape/ });
      writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, target_modules: ['qkv'] }));
      t.throws(() => loadLoraAdapter(dir, fresh), { instanceOf: QrlhfError, message: /adapter_config\.json: unknown target module "qkv"/ });
      t.is(fresh.lora, loaded, 'a failed load keeps the previous adapter');
      model.dispose();
      fresh.dispose();
      other.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test.serial(`${label}: bad LoRA configs are refused`, (t) => {
    const model = modelFrom(c, randomWeights(c, 1));
    const rng = new Rng(0);
    t.throws(() => model.addLora({ r: 0, alpha: 1, dropout: 0, targetModules: 'all-linear' }, rng), { instanceOf: QrlhfError, message: /r must be/ });
    t.throws(() => model.addLora({ r: 2, alpha: 1, dropout: 1, targetModules: 'all-linear' }, rng), { instanceOf: QrlhfError, message: /dropout/ });
    t.throws(() => model.addLora({ r: 2, alpha: 1, dropout: 0, targetModules: ['lm_head'] }, rng), { instanceOf: QrlhfError, message: /"lm_head"/ });
    model.dispose();
  });
}
