/** Independent float64 references and fixtures shared by the qrm tests (not a test file itself). */
import { Tokenizer, characterTokenizer, type LlamaConfig } from '@qrlhf/core';

export type F64Params = Record<string, { shape: number[]; data: Float64Array }>;

export function toF64(tensors: Record<string, { shape: number[]; data: ArrayLike<number> }>): F64Params {
  const out: F64Params = {};
  for (const [k, v] of Object.entries(tensors)) out[k] = { shape: [...v.shape], data: Float64Array.from(v.data) };
  return out;
}

/** The gate in float64 from its file layout (Linear weights [out, in]): beta · softmax(MLP(x) / T). */
export function gateF64(p: F64Params, x: ArrayLike<number>, nLayers: number, T: number): number[] {
  let h = Array.from(x);
  for (let i = 0; i < nLayers; i++) {
    const W = p[`layers.${i}.weight`]!;
    const b = p[`layers.${i}.bias`]!;
    const [out, inn] = W.shape as [number, number];
    const y = new Array<number>(out).fill(0);
    for (let o = 0; o < out; o++) {
      let s = b.data[o]!;
      for (let j = 0; j < inn; j++) s += W.data[o * inn + j]! * h[j]!;
      y[o] = i < nLayers - 1 ? Math.max(0, s) : s;
    }
    h = y;
  }
  const z = h.map((v) => v / T);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  const beta = p['beta']!.data[0]!;
  return e.map((v) => (beta * v) / s);
}

/** A character-level tokenizer.json (BPE without merges): no shared data needed. */
export function charTokenizer(): Tokenizer {
  return characterTokenizer();
}

export const tinyLlama: LlamaConfig = {
  vocabSize: 40, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2,
  rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 128, bosTokenId: 1, eosTokenId: 2,
};
