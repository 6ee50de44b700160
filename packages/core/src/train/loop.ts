/**
 * One training-run scaffold for every trainer (the base model's pretraining, SFT, RLOO): what
 * they share lives here, and each trainer keeps only its data and its loss.
 *
 *   TrainingRun          the run folder (run.ts: lock, kind), the resume guard, the last checkpoint
 *                        (restore: refused when the settings that fix the trajectory changed) and
 *                        saving one (the trained variables, AdamW's moments, the Rng: state.ts,
 *                        atomic), config.json and the metrics tracker (on resume, metrics.jsonl
 *                        keeps the rows up to the checkpoint).
 *   accumulateGradients  ∇L = Σ_m ∇L_m over the micro-batches m of one update, L = Σ_m L_m,
 *                        keyed by the variables' own keys (tf.variableGrads keys by tfjs name).
 *   applyGradients       g ← g · min(1, c / (‖g‖ + 1e-6)) when clipping at c > 0, then AdamW; a
 *                        non-finite ‖g‖ skips the update and is returned for the trainer to refuse.
 *   runTrainingLoop      for each update: the trainer's step → its metrics row, logged every
 *                        logEvery updates (and the first and last; between, the progress bar
 *                        moves) → the trainer's `after` (evaluation, samples) → a checkpoint every
 *                        `every` updates and at the end → onStep.
 *
 * Why: this skeleton was written three times (sft/train.ts, rloo/learner.ts with rloo/train.ts,
 * experiments/figure3/pretrain.ts), so a fix to one (the resume guard, the order of a dispose)
 * could miss the others. Loss convention: each micro-batch's loss is already normalised by the
 * whole update's count (tokens, responses), so the sum over micro-batches is the update's loss and
 * the sum of their gradients its gradient, whatever the micro-batch size.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { writeFileAtomic } from '../io/atomic.js';
import type { Rng } from '../random.js';
import type { Metrics } from '../track/sink.js';
import { Tracker } from '../track/tracker.js';
import type { AdamW } from './adamw.js';
import { clipGradNorm, globalNorm } from './clip.js';
import { openRunFolder, type RunFolder } from './run.js';
import { checkResumableConfig, checkpointGuard, loadTrainingState, saveTrainingState, type TrainingState } from './state.js';

/** What a checkpoint holds besides the step: the trained variables, their optimiser, the run's Rng. */
export interface Trained {
  /** An adapter's variables, or every weight of a model trained whole; keyed as saved. */
  variables: Record<string, tf.Variable>;
  optimizer: AdamW;
  rng: Rng;
}

export interface TrainingRunOptions {
  /** The run folder. */
  out: string;
  /** Its kind (`.qrlhf-run`): a stage writes only into an empty folder or one of its own kind. */
  kind: string;
  /** Continue the folder's checkpoint; without it, a folder that has one is refused. */
  resume: boolean;
}

/** Where a run keeps its checkpoint, under its folder. */
export const CHECKPOINT_DIR = 'checkpoints';

/**
 * A run folder held by this process: open() takes it (lock, kind, resume guard), restore() gives
 * the checkpoint to continue (or clears a fresh run's leftovers), save() writes one, track()
 * starts config.json and the metrics, release() lets the folder go.
 */
export class TrainingRun {
  readonly out: string;
  readonly kind: string;
  readonly resume: boolean;
  readonly checkpointDir: string;
  private readonly folder: RunFolder;
  private trajectory: Record<string, unknown> = {};

  private constructor(folder: RunFolder, o: TrainingRunOptions) {
    this.folder = folder;
    this.out = o.out;
    this.kind = o.kind;
    this.resume = o.resume;
    this.checkpointDir = join(o.out, CHECKPOINT_DIR);
  }

  /** Takes the folder for this process and kind; refuses one with a checkpoint unless resuming. */
  static open(o: TrainingRunOptions): TrainingRun {
    const folder = openRunFolder(o.out, o.kind);
    try {
      checkpointGuard(o.out, join(o.out, CHECKPOINT_DIR), o.resume);
    } catch (e) {
      folder.release();
      throw e;
    }
    return new TrainingRun(folder, o);
  }

  /**
   * The checkpoint to continue from: when resuming and the folder has one, after checking that it
   * was made with the same `trajectory` settings (the config values that fix the run's numbers);
   * otherwise null, and a fresh run's leftover checkpoint files are removed. `trajectory` is saved
   * with every later checkpoint. The returned tensors belong to the caller (restoreOptimizer and
   * LoraAdapter.fromTensors take them over).
   */
  restore(trajectory: Record<string, unknown>): TrainingState | null {
    this.trajectory = { ...trajectory };
    const state = this.resume ? loadTrainingState(this.checkpointDir) : null;
    if (state) {
      try {
        checkResumableConfig(state.extra['config'], this.trajectory, Object.keys(this.trajectory), join(this.checkpointDir, 'state.json'));
      } catch (e) {
        disposeLoaded(state);
        throw e;
      }
    } else {
      rmSync(this.checkpointDir, { recursive: true, force: true });
    }
    return state;
  }

  /** Saves the checkpoint of update `step` (atomically); `extra` is the trainer's own JSON (data position…). */
  async save(step: number, t: Trained, extra: Record<string, unknown> = {}): Promise<void> {
    await saveTrainingState(this.checkpointDir, {
      step,
      variables: t.variables,
      optimizer: t.optimizer.getState(),
      rng: t.rng.state(),
      extra: { ...extra, config: this.trajectory },
    });
  }

  /**
   * Writes the resolved config to config.json and opens the run's metrics (metrics.jsonl, console,
   * W&B). From a checkpoint at `start` > 0 the file keeps the rows of steps ≤ start (a killed run's
   * later rows go); `kept` sees each kept row.
   */
  async track(o: {
    config: object;
    start: number;
    total: number;
    label: string;
    keys: string[];
    console: boolean;
    wandbProject: string | null;
    kept?: (row: Metrics) => void;
  }): Promise<Tracker> {
    writeFileAtomic(join(this.out, 'config.json'), JSON.stringify(o.config, null, 2) + '\n');
    return await Tracker.create({
      dir: this.out,
      console: o.console,
      label: o.label,
      total: o.total,
      start: o.start,
      keys: o.keys,
      resume: o.start > 0,
      keep: (row) => {
        o.kept?.(row);
        const s = row['step'];
        return typeof s === 'number' && s <= o.start;
      },
      wandb: o.wandbProject ? { project: o.wandbProject, config: { ...o.config } } : false,
    });
  }

  /** Lets the folder go (safe to call twice). */
  release(): void {
    this.folder.release();
  }
}

function disposeLoaded(s: TrainingState): void {
  for (const t of Object.values(s.variables)) t.dispose();
  for (const t of Object.values(s.optimizer.tensors)) t.dispose();
}

/** Puts a checkpoint's AdamW moments and step count into `opt` and frees the loaded copies (none for a fresh run). */
export function restoreOptimizer(opt: AdamW, state: TrainingState | null): void {
  if (!state) return;
  opt.setState(state.optimizer);
  for (const t of Object.values(state.optimizer.tensors)) t.dispose();
}

/**
 * Σ over micro-batches of the gradient of `lossOf(mb)` with respect to `variables`, keyed like
 * `variables`, and Σ of the losses (each read as a float32, summed in float64). `lossOf` runs
 * under the gradient tape: the tensors it makes (the micro-batch's inputs too) are freed with the
 * tape. Micro-batches are taken in order and each one's gradients are added to the running sum as
 * soon as they exist, so one micro-batch's activations are alive at a time. The caller disposes
 * the returned gradients.
 */
export async function accumulateGradients<T>(
  microBatches: Iterable<T>,
  lossOf: (mb: T) => tf.Scalar,
  variables: Record<string, tf.Variable>,
): Promise<{ grads: Record<string, tf.Tensor>; loss: number }> {
  const keyOf = new Map(Object.entries(variables).map(([key, v]) => [v.name, key]));
  const list = Object.values(variables);
  let acc: Record<string, tf.Tensor> | null = null;
  let loss = 0;
  for (const mb of microBatches) {
    const { value, grads } = tf.variableGrads(() => lossOf(mb), list);
    loss += (await value.data())[0]!;
    value.dispose();
    if (acc === null) {
      acc = {};
      for (const [name, g] of Object.entries(grads)) acc[keyOf.get(name)!] = g;
    } else {
      for (const [name, g] of Object.entries(grads)) {
        const key = keyOf.get(name)!;
        const prev = acc[key]!;
        acc[key] = tf.add(prev, g);
        tf.dispose([prev, g]);
      }
    }
  }
  return { grads: acc ?? {}, loss };
}

/**
 * One AdamW update from summed gradients at learning rate `lr`, clipped to global norm `gradClip`
 * first when it is > 0 (PyTorch's clip_grad_norm_). Returns the norm before clipping; a non-finite
 * norm skips the update (the trainer names the step and refuses it). Disposes `grads`.
 */
export async function applyGradients(opt: AdamW, grads: Record<string, tf.Tensor>, lr: number, gradClip: number): Promise<number> {
  try {
    if (gradClip > 0) {
      const c = await clipGradNorm(grads, gradClip);
      if (Number.isFinite(c.norm)) opt.step(c.grads, lr);
      tf.dispose(Object.values(c.grads));
      return c.norm;
    }
    const norm = await globalNorm(grads);
    if (Number.isFinite(norm)) opt.step(grads, lr);
    return norm;
  } finally {
    tf.dispose(Object.values(grads));
  }
}

/** What the loop tells a trainer's step. */
export interface StepContext {
  /** 0-based index of this update (its row's step is index + 1). */
  index: number;
  /** The step of the last checkpoint written (the start step before any). */
  lastCheckpoint: number;
}

/** Where a loop's checkpoints go: every `every` updates (0: only at the end) and after the last. */
export interface Checkpointer {
  every: number;
  save(step: number): Promise<void>;
}

/** A trainer as the loop sees it: its updates and what to do around them. */
export interface TrainingLoop {
  /** Updates already done (a resumed run's checkpoint step) and in all. */
  start: number;
  total: number;
  /** One update: returns its metrics row (with `step`: index + 1). */
  step(ctx: StepContext): Promise<Metrics>;
  /** A row is logged every logEvery updates, and at the first and last; between, progress(step). */
  logEvery: number;
  log(row: Metrics): void;
  progress?(step: number): void;
  /** After update `step` (1-based) is logged and before its checkpoint: evaluation, samples. */
  after?(step: number, row: Metrics): Promise<void> | void;
  checkpoint?: Checkpointer;
  /** Last, once the update's checkpoint (if any) is written. */
  onStep?(step: number): void;
}

/** Runs updates start … total-1 (see the file comment); returns the steps done and the last row logged. */
export async function runTrainingLoop(o: TrainingLoop): Promise<{ steps: number; last: Metrics | null }> {
  let step = o.start;
  let last: Metrics | null = null;
  let lastCheckpoint = o.start;
  const ckpt = o.checkpoint;
  while (step < o.total) {
    const row = await o.step({ index: step, lastCheckpoint });
    step++;
    if (step % o.logEvery === 0 || step === o.total || step === 1) {
      o.log(row);
      last = row;
    } else {
      o.progress?.(step);
    }
    await o.after?.(step, row);
    if (ckpt && ((ckpt.every > 0 && step % ckpt.every === 0) || step === o.total)) {
      await ckpt.save(step);
      lastCheckpoint = step;
    }
    o.onStep?.(step);
  }
  return { steps: step, last };
}
