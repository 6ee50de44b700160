/**
 * Figure 3's stage markers: a stage runs unless its folder's `.done` exists, and records there the
 * settings it depended on, what it returned and how long it took. Shared by the runner (run.ts) and
 * its RL workers (worker.ts), so a stage finished by either is skipped by both.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError, writeFileAtomic } from '@qrlhf/core';
import type { Figure3Config } from './config.js';

export function log(msg: string): void {
  process.stderr.write(`[figure3] ${msg}\n`);
}

/** Seconds each stage took, by stage name (a skipped stage: the seconds its marker recorded). */
export const stageSeconds: Record<string, number> = {};

/**
 * Runs `fn` unless `dir/.done` exists; marks the stage done with its inputs (the settings it and
 * the stages before it depend on) and what fn returned. A finished stage whose inputs differ from
 * the current settings is an error, not silently reused: its outputs belong to another experiment.
 */
export async function stage<T>(name: string, dir: string, inputs: Record<string, unknown>, fn: () => Promise<T>): Promise<T> {
  const marker = join(dir, '.done');
  if (existsSync(marker)) {
    const done = JSON.parse(readFileSync(marker, 'utf8')) as { inputs?: Record<string, unknown>; result: T; seconds?: number };
    const changed = Object.keys({ ...inputs, ...done.inputs }).filter(
      (k) => JSON.stringify(done.inputs?.[k]) !== JSON.stringify(inputs[k]),
    );
    if (changed.length) {
      throw new QrlhfError(
        `${name}: ${dir} was made with other settings (${changed
          .map((k) => `${k}: ${JSON.stringify(done.inputs?.[k])} then, ${JSON.stringify(inputs[k])} now`)
          .join('; ')}); use another --out, or delete that folder to redo it and what follows`,
      );
    }
    log(`${name}: done already (${dir}), skipped`);
    stageSeconds[name] = done.seconds ?? NaN;
    return done.result;
  }
  const t0 = Date.now();
  log(`${name}: starting`);
  mkdirSync(dir, { recursive: true });
  const result = await fn();
  const seconds = (Date.now() - t0) / 1000;
  writeFileAtomic(marker, JSON.stringify({ inputs, result, seconds }, null, 2) + '\n');
  stageSeconds[name] = seconds;
  log(`${name}: done in ${seconds.toFixed(1)} s`);
  return result;
}

/** A config block as dotted keys ({"rloo.lambda": 5, ...}): stage markers compare and name them one by one. */
function flatten(o: object, prefix: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) Object.assign(out, flatten(v as object, `${prefix}${k}.`));
    else out[`${prefix}${k}`] = v;
  }
  return out;
}

/** The settings each stage depends on: its own block and those of the stages before it. */
export function stageInputs(cfg: Figure3Config) {
  const pick = (...blocks: ('world' | 'pretrain' | 'sft' | 'policyRatings' | 'rewardBackbone' | 'qrm' | 'rloo')[]) => Object.assign({}, ...blocks.map((b) => flatten(cfg[b], `${b}.`))) as Record<string, unknown>;
  const { generationBatchSize, maxNewTokens, temperature } = cfg.rloo;
  // an SFT-policy evaluation depends on the policy, the QRM and the sampling settings, not on RL's
  const sampling = { 'rloo.generationBatchSize': generationBatchSize, 'rloo.maxNewTokens': maxNewTokens, 'rloo.temperature': temperature };
  // with on-policy ratings the QRM depends on the SFT policy and on how its samples are drawn too
  const qrm = cfg.policyRatings.responses > 0
    ? { ...pick('world', 'pretrain', 'sft', 'policyRatings', 'rewardBackbone', 'qrm'), ...sampling }
    : pick('world', 'pretrain', 'rewardBackbone', 'qrm');
  return {
    data: pick('world'),
    pretrain: pick('world', 'pretrain'),
    sft: pick('world', 'pretrain', 'sft'),
    qrm,
    sftEval: { ...pick('world', 'pretrain', 'sft', 'policyRatings', 'rewardBackbone', 'qrm'), ...sampling },
    rl: pick('world', 'pretrain', 'sft', 'policyRatings', 'rewardBackbone', 'qrm', 'rloo'),
  };
}
