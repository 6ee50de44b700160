import seedrandom from 'seedrandom';

/**
 * Every random draw in qrlhf goes through a Rng: a seeded generator (seedrandom's ARC4) whose
 * state can be saved into a checkpoint and restored, so a resumed run draws the same numbers.
 */
export type RngState = seedrandom.State.Arc4;

export class Rng {
  private prng: seedrandom.StatefulPRNG<seedrandom.State.Arc4>;

  constructor(seed: string | number, state?: RngState) {
    this.prng = state
      ? seedrandom('', { state: { ...state, S: [...state.S] } })
      : seedrandom(String(seed), { state: true });
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.prng();
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.prng() * n);
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.prng();
    const v = this.prng();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** A fresh 32-bit integer, e.g. a seed for tfjs ops that take one. */
  seed32(): number {
    return this.prng.int32() >>> 0;
  }

  /** In-place Fisher-Yates shuffle. */
  shuffle<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [xs[i], xs[j]] = [xs[j]!, xs[i]!];
    }
    return xs;
  }

  /** The generator's state, JSON-serialisable, for checkpoints. */
  state(): RngState {
    return this.prng.state();
  }

  /** A child generator derived from this one's seed stream (for independent sub-streams). */
  fork(label: string): Rng {
    return new Rng(`${this.seed32()}:${label}`);
  }
}
