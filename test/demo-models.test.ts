import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { generate, match, prng, watch } from "../examples/recommender/data/synth.js";
// @ts-expect-error plain-JS model services (they run inside the images as they are); no type declarations
import * as popularity from "../examples/recommender/models/popularity/server.js";
// @ts-expect-error see above
import * as itemKnn from "../examples/recommender/models/item-knn/server.js";

type Model = { recommend(user: string, k: number): string[] };
const data = generate();

test("the data set is deterministic: same seed, same data; another seed, other data", () => {
  const digest = (d: unknown) => createHash("sha256").update(JSON.stringify(d)).digest("hex");
  assert.equal(digest(generate()), digest(data));
  assert.notEqual(digest(generate({ seed: 43 })), digest(data));
  assert.equal(new Set(data.users.map((u) => u.id)).size, data.users.length);
  assert.ok(data.ratings.every((r) => r.rating >= 1 && r.rating <= 5));
});

test("item-kNN recovers the hidden tastes from ratings; popularity does not: the demo has a true winner", () => {
  const models: Record<string, Model> = { popularity: popularity.train(data), "item-knn": itemKnn.train(data) };
  const byId = new Map(data.movies.map((m) => [m.id, m]));
  const users = data.users.slice(0, 600);
  const result: Record<string, { match: number; watchRate: number }> = {};
  for (const [name, model] of Object.entries(models)) {
    const rand = prng(11);
    let matchSum = 0;
    let watched = 0;
    for (const u of users) {
      const recs = model.recommend(u.id, 10).map((id) => byId.get(id)!);
      assert.equal(recs.length, 10);
      const rated = new Set(data.ratings.filter((r) => r.user === u.id).map((r) => r.movie));
      assert.ok(recs.every((m) => !rated.has(m.id)), "never recommends what the user already rated");
      matchSum += recs.reduce((s, m) => s + match(u, m), 0) / recs.length;
      for (let i = 0; i < 5; i++) if (watch(u, recs, rand)) watched++;
    }
    result[name] = { match: matchSum / users.length, watchRate: watched / (users.length * 5) };
  }
  assert.ok(result["item-knn"].match > 0.7, JSON.stringify(result));
  assert.ok(result.popularity.match < 0.3, JSON.stringify(result));
  // a clear but believable lift in watches per request
  const lift = result["item-knn"].watchRate / result.popularity.watchRate;
  assert.ok(lift > 1.3 && lift < 2.5, JSON.stringify(result));
});
