// Popularity recommender: the movies most users rated, minus those the user has already rated. The classic
// baseline: cheap, robust, and blind to the user's own taste.
import { createServer } from "node:http";
import { generate } from "../../data/synth.js";

/** Build the model from ratings: movie ids ordered by how many users rated them (ties by id). */
export function train(data) {
  const counts = new Map(data.movies.map((m) => [m.id, 0]));
  const seen = new Map();
  for (const r of data.ratings) {
    counts.set(r.movie, counts.get(r.movie) + 1);
    if (!seen.has(r.user)) seen.set(r.user, new Set());
    seen.get(r.user).add(r.movie);
  }
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([id]) => id);
  return {
    recommend(user, k) {
      const mine = seen.get(user) ?? new Set();
      const out = [];
      for (const id of ranked) {
        if (out.length >= k) break;
        if (!mine.has(id)) out.push(id);
      }
      return out;
    },
  };
}

export function serve(model, data, name) {
  const byId = new Map(data.movies.map((m) => [m.id, m]));
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    const send = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === "/health") return send(200, { ok: true, model: name });
    if (url.pathname !== "/recommend") return send(404, { error: "not found" });
    const user = url.searchParams.get("user") ?? req.headers["x-user-id"];
    const k = Math.min(100, Math.max(1, Number(url.searchParams.get("k") ?? 10) || 10));
    if (!user) return send(400, { error: "user is required" });
    const items = model.recommend(String(user), k).map((id, rank) => ({ id, title: byId.get(id).title, rank: rank + 1 }));
    send(200, { model: name, user, items });
  });
  server.keepAliveTimeout = 65_000;
  const port = Number(process.env.PORT || 9001);
  server.listen(port, process.env.HOST || "127.0.0.1", () => console.log(`${name} model listening on ${port}`));
  // exit promptly on `docker stop` (node as PID 1 gets no default SIGTERM handling)
  for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.close(() => process.exit(0)).closeIdleConnections());
  return server;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const data = generate({ seed: Number(process.env.DATA_SEED || 42) });
  serve(train(data), data, process.env.MODEL || "popularity");
}
