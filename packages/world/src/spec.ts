/**
 * The world's fixed content: topics, templates, moves, rater types and how each move moves each
 * attribute for each type. Everything the world does is a function of these tables (and of the
 * seed for its random draws); `createWorld(seed, opts)` may override the tunable parts.
 */

export const ATTRIBUTES = ['helpfulness', 'harmlessness', 'verbosity'] as const;
export type Attribute = (typeof ATTRIBUTES)[number];

/** The moves a response is made of. 'garbled' is any sentence that matches no template. */
export const MOVE_IDS = ['answer', 'detail', 'caution', 'joke', 'refuse', 'ramble'] as const;
export type MoveId = (typeof MOVE_IDS)[number];
export type ParsedMoveId = MoveId | 'garbled';

export interface Topic {
  name: string;
  objects: string[];
  verbs: string[];
}

export const TOPICS: Topic[] = [
  { name: 'cooking', objects: ['rice', 'pasta', 'soup', 'bread', 'eggs'], verbs: ['cook', 'heat', 'stir', 'season', 'bake'] },
  { name: 'garden', objects: ['tomatoes', 'roses', 'herbs', 'lawn', 'seeds'], verbs: ['water', 'plant', 'trim', 'feed', 'grow'] },
  { name: 'travel', objects: ['bags', 'tickets', 'trip', 'hotel', 'passport'], verbs: ['pack', 'book', 'check', 'plan', 'carry'] },
  { name: 'computer', objects: ['laptop', 'files', 'password', 'printer', 'email'], verbs: ['update', 'save', 'reset', 'clean', 'sort'] },
  { name: 'fitness', objects: ['legs', 'back', 'breathing', 'sleep', 'posture'], verbs: ['stretch', 'train', 'rest', 'improve', 'relax'] },
  { name: 'money', objects: ['budget', 'savings', 'bills', 'taxes', 'rent'], verbs: ['track', 'plan', 'pay', 'cut', 'review'] },
  { name: 'home', objects: ['kitchen', 'floor', 'windows', 'closet', 'garage'], verbs: ['clean', 'paint', 'fix', 'organize', 'dust'] },
  { name: 'pets', objects: ['dog', 'cat', 'fish', 'puppy', 'parrot'], verbs: ['feed', 'walk', 'train', 'groom', 'wash'] },
];

export const NUMBERS = ['two', 'three', 'five', 'ten', 'twenty'];

/** Question templates. Slots: {verb}, {obj}. */
export const QUESTIONS = [
  'How do I {verb} the {obj}?',
  'How can I {verb} the {obj}?',
  'What is the best way to {verb} the {obj}?',
  'Can you help me {verb} the {obj}?',
  'I need to {verb} the {obj}. Any tips?',
  'Any advice on how to {verb} the {obj}?',
];

/** Follow-up questions of a two-turn dialogue (the final question's object is the one that counts). */
export const FOLLOW_UPS = [
  'Thanks. And how do I {verb} the {obj}?',
  'Okay. What about the {obj}?',
  'Got it. Can you help me {verb} the {obj} too?',
];

/**
 * Sentence templates per move. Slots: {verb}, {obj}, {num}. Each move's templates start with
 * words no other move starts with, so the choice of move is made at the first token of a sentence.
 */
export const MOVE_TEMPLATES: Record<MoveId, string[]> = {
  answer: [
    'You can {verb} the {obj} a little at a time.',
    'The best way is to {verb} the {obj} step by step.',
    'Try to {verb} the {obj} early in the day.',
    'Start small and {verb} the {obj} with care.',
  ],
  detail: [
    'In detail, {verb} the {obj} for {num} minutes, then check it again.',
    'For more detail, {verb} the {obj} {num} times a week and keep notes.',
    'To be precise, {verb} the {obj} for {num} minutes and adjust as needed.',
  ],
  caution: [
    'Please be careful with the {obj} and ask an expert if unsure.',
    'Be safe, and stop if anything about the {obj} feels wrong.',
    'Stay careful, and keep children and pets away from the {obj}.',
  ],
  joke: [
    'Here is a joke: the {obj} is like your ex, it never listens and costs money.',
    'Funny thing, the {obj} is smarter than most people I know, which is sad.',
    'Joke time: why fix the {obj} when you can blame your lazy neighbor?',
  ],
  refuse: [
    'I am sorry, but I cannot help with that.',
    'Sorry, I would rather not answer that.',
    'I cannot give advice about the {obj}, sorry.',
  ],
  ramble: [
    'Well, there is a lot to say about the {obj}, and so on and so on.',
    'Honestly, the {obj} is one of those things people talk about all the time.',
    'So, as they say, the {obj} is what it is, more or less.',
  ],
};

/** Moves whose value depends on naming the object the user asked about. */
export const TOPICAL_MOVES: ReadonlySet<MoveId> = new Set<MoveId>(['answer', 'detail']);

/** Per-attribute score contributions (before the clamp to [0, 1] and the noise). */
export type Contribution = Partial<Record<Attribute, number>>;

export interface RaterType {
  name: string;
  probability: number;
  /** what this type adds to the default contributions, per move (or 'garbled', 'offTopic', 'repeat') */
  deltas: Partial<Record<ContributionKey, Contribution>>;
}

export type ContributionKey = ParsedMoveId | 'offTopic' | 'repeat' | 'long' | 'empty';

export interface WorldParams {
  /** score of an empty response, per attribute */
  base: Record<Attribute, number>;
  /**
   * default contribution of each move (every type), added once per distinct move; 'repeat' for a
   * move seen before, 'offTopic' for a topical move about another object (once per move; a second such one is a 'repeat'), 'garbled' per unparsed
   * sentence, 'long' once per sentence beyond `usefulMoves`, 'empty' for a response with no sentence
   * at all (so that stopping at once is no way out of a bad policy's average)
   */
  contributions: Record<ContributionKey, Contribution>;
  /** sentences beyond this many make a response too long (each adds contributions.long) */
  usefulMoves: number;
  raterTypes: RaterType[];
  /** half-width of a rater's uniform leniency noise, shared by the attributes of one rating */
  noise: number;
  /** the reward of a rater is sum_m w_m a_m; w >= 0, sum 1 (the gate's form) */
  rewardWeights: Record<Attribute, number>;
  /** behaviour policy of the datasets (pretraining and SFT candidates; ratings and pairs with `ratedBehaviour`'s changes) */
  behaviour: BehaviourPolicy;
  /**
   * what the responses of the ratings and the preference pairs change of `behaviour`: rated data
   * come from a broader set of writers than the SFT data (as real preference sets pool several
   * models), so the reward model also sees the good responses RL will write
   */
  ratedBehaviour: Partial<BehaviourPolicy>;
  /** share of two-turn prompts */
  twoTurnRate: number;
  /** target vocabulary size of the byte-level BPE tokenizer (bytes, specials and merges) */
  vocabSize: number;
}

/** A response policy over move sequences: the length, then each move i.i.d. from a categorical. */
export interface BehaviourPolicy {
  /** P(number of moves = i + 1) */
  lengths: number[];
  /** weights of the first move */
  first: Partial<Record<MoveId, number>>;
  /** weights of the later moves */
  next: Partial<Record<MoveId, number>>;
  /** probability that a topical move names another object than the one asked about */
  offTopicRate: number;
  /** probability that a sentence is replaced by a garbled one (ratings and pairs only) */
  garbleRate: number;
}

export const DEFAULT_PARAMS: WorldParams = {
  base: { helpfulness: 0.1, harmlessness: 0.45, verbosity: 0.1 },
  contributions: {
    answer: { helpfulness: 0.3, verbosity: 0.05 },
    detail: { helpfulness: 0.2, verbosity: 0.2 },
    caution: { helpfulness: -0.02, harmlessness: 0.2, verbosity: 0.1 },
    joke: { helpfulness: 0.5, harmlessness: -0.02, verbosity: 0.05 },
    refuse: { helpfulness: -0.1, harmlessness: 0.05, verbosity: 0.0 },
    ramble: { helpfulness: -0.1, verbosity: 0.35 },
    garbled: { helpfulness: -0.1, harmlessness: -0.1, verbosity: 0.1 },
    offTopic: { helpfulness: 0.15, verbosity: 0.1 },
    repeat: { helpfulness: -0.1, verbosity: 0.15 },
    long: { helpfulness: -0.12, verbosity: 0.15 },
    empty: { helpfulness: -0.1, harmlessness: -0.2 },
  },
  usefulMoves: 3,
  raterTypes: [
    { name: 'mainstream', probability: 0.46, deltas: {} },
    { name: 'thorough', probability: 0.16, deltas: { detail: { helpfulness: 0.1 }, joke: { helpfulness: -0.1 } } },
    { name: 'brisk', probability: 0.13, deltas: { detail: { helpfulness: -0.1 }, ramble: { helpfulness: -0.1 } } },
    { name: 'sensitive', probability: 0.25, deltas: { joke: { helpfulness: -0.6, harmlessness: -0.9 } } },
  ],
  noise: 0.07,
  rewardWeights: { helpfulness: 0.5, harmlessness: 0.5, verbosity: 0 },
  behaviour: {
    lengths: [0.25, 0.4, 0.27, 0.08],
    first: { answer: 0.14, detail: 0.08, refuse: 0.34, ramble: 0.34, caution: 0.1 },
    next: { answer: 0.1, detail: 0.15, joke: 0.25, caution: 0.15, ramble: 0.25, refuse: 0.1 },
    offTopicRate: 0.1,
    garbleRate: 0.1,
  },
  ratedBehaviour: {
    first: { answer: 0.3, detail: 0.1, caution: 0.1, refuse: 0.25, ramble: 0.25 },
    next: { answer: 0.1, detail: 0.2, joke: 0.2, caution: 0.2, ramble: 0.15, refuse: 0.15 },
  },
  twoTurnRate: 0.25,
  vocabSize: 768,
};
