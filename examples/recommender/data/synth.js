// Deterministic synthetic movie data with hidden tastes, shared by the data generator, both model services and
// the user simulator, so that every part sees the same users, movies and ratings. Plain JavaScript without
// dependencies: it runs inside the model images as it is.
//
// The hidden model: each movie has a genre vector (one main genre, sometimes a second) and a popularity drawn
// from a Zipf-like law; each user has a taste vector concentrated on one or two genres. How much a user likes
// a movie is the cosine of the two vectors ("match"). Past ratings are drawn with probability growing with
// popularity and match, so co-rated movies share genres and a collaborative-filtering model can recover the
// tastes from ratings alone; a popularity model cannot.

export const GENRES = ["action", "comedy", "drama", "horror", "romance", "sci-fi", "documentary", "animation"];

export const DEFAULTS = Object.freeze({ seed: 42, users: 3000, movies: 300, ratingsPerUser: 20 });

/** mulberry32, the same generator as abgate's seededRandom. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normalize(v) {
  const n = Math.sqrt(v.reduce((s, x) => s + x * x, 0)) || 1;
  return v.map((x) => x / n);
}

/** Cosine of a user's taste and a movie's genres, in [0, 1] (both vectors are non-negative and unit length). */
export function match(user, movie) {
  let s = 0;
  for (let g = 0; g < user.taste.length; g++) s += user.taste[g] * movie.genres[g];
  return s;
}

function pickWeighted(weights, total, rand) {
  let x = rand() * total;
  for (let i = 0; i < weights.length; i++) {
    x -= weights[i];
    if (x < 0) return i;
  }
  return weights.length - 1;
}

/**
 * Generate the data set. Same options, same data, on every machine.
 * @param {{seed?: number, users?: number, movies?: number, ratingsPerUser?: number}} [options]
 */
export function generate(options = {}) {
  const o = { ...DEFAULTS, ...options };
  const rand = prng(o.seed);
  const G = GENRES.length;
  const movies = [];
  for (let m = 0; m < o.movies; m++) {
    const v = new Array(G).fill(0.05);
    const main = Math.floor(rand() * G);
    v[main] = 1;
    if (rand() < 0.5) v[Math.floor(rand() * G)] += 0.5;
    movies.push({
      id: `m${m + 1}`,
      title: `${GENRES[main][0].toUpperCase()}${GENRES[main].slice(1)} Story ${m + 1}`,
      genres: normalize(v),
      // Zipf-like popularity with a random rank, so popularity says nothing about genre
      popularity: 0,
      minutes: 80 + Math.floor(rand() * 70),
    });
  }
  const ranks = movies.map((_, i) => i);
  for (let i = ranks.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [ranks[i], ranks[j]] = [ranks[j], ranks[i]];
  }
  movies.forEach((mv, i) => (mv.popularity = 1 / Math.pow(ranks[i] + 1, 0.7)));

  // Ids look like real ones (random, not u1, u2, ...): sticky FNV-1a hashing of short sequential strings is
  // visibly unbalanced, which would show up as a sample-ratio mismatch that has nothing to do with the models.
  const idRand = prng(o.seed ^ 0x5bd1e995);
  const ids = new Set();
  while (ids.size < o.users) ids.add(`u${Math.floor(idRand() * 2 ** 32).toString(36).padStart(7, "0")}`);
  const idList = [...ids];
  const users = [];
  for (let u = 0; u < o.users; u++) {
    const v = new Array(G).fill(0.03);
    v[Math.floor(rand() * G)] += 1;
    if (rand() < 0.6) v[Math.floor(rand() * G)] += 0.4 + 0.4 * rand();
    users.push({ id: idList[u], taste: normalize(v) });
  }

  const ratings = [];
  for (const user of users) {
    const weights = movies.map((mv) => mv.popularity * Math.pow(0.1 + match(user, mv), 4));
    let total = weights.reduce((s, w) => s + w, 0);
    const n = Math.max(3, Math.round(o.ratingsPerUser * (0.5 + rand())));
    for (let i = 0; i < n && total > 0; i++) {
      const m = pickWeighted(weights, total, rand);
      total -= weights[m];
      weights[m] = 0;
      const mv = movies[m];
      const score = 1 + 4 * match(user, mv) + (rand() - 0.5) * 1.5;
      ratings.push({ user: user.id, movie: mv.id, rating: Math.min(5, Math.max(1, Math.round(score))) });
    }
  }
  return { options: o, genres: GENRES, movies, users, ratings };
}

/**
 * What a user does with a list of recommendations: looks down the list (attention falls with position) and
 * watches at most one movie, with a probability that grows with how well it matches their hidden taste.
 * Returns the watched movie and minutes watched, or null.
 * @param {{taste: number[]}} user
 * @param {{genres: number[], minutes: number, id: string}[]} recommended
 * @param {() => number} rand
 */
export function watch(user, recommended, rand) {
  for (let i = 0; i < recommended.length; i++) {
    const mv = recommended[i];
    const attention = 1 / (1 + 0.35 * i);
    // a baseline interest keeps popular-but-unmatched movies watchable: the demo's lift is real but not absurd
    const p = 0.025 * attention * (1.2 + match(user, mv));
    if (rand() < p) {
      const share = Math.min(1, 0.3 + 0.7 * match(user, mv) + (rand() - 0.5) * 0.2);
      return { movie: mv.id, minutes: Math.round(mv.minutes * share * 10) / 10 };
    }
  }
  return null;
}
