/**
 * Write the synthetic recommender data set as CSV files: movies (with their genre vectors), users (with their
 * hidden tastes: what the simulator uses and the models never see) and ratings (what the models learn from).
 * Deterministic: the same seed gives byte-identical files. The model services and `abgate simulate` generate
 * the same data in memory from the same seed, so the files are for looking at, not a download.
 *
 *   npx tsx examples/recommender/data/generate.ts [outDir] [--seed 42] [--users 3000] [--movies 300]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { generate, GENRES, type Dataset, type DatasetOptions } from "./synth.js";

const fmt = (x: number): string => String(Math.round(x * 1e4) / 1e4);

export function toCsv(data: Dataset): { movies: string; users: string; ratings: string } {
  const movies = [`id,title,minutes,popularity,${GENRES.join(",")}`];
  for (const m of data.movies) movies.push([m.id, JSON.stringify(m.title), m.minutes, fmt(m.popularity), ...m.genres.map(fmt)].join(","));
  const users = [`id,${GENRES.map((g) => `taste_${g}`).join(",")}`];
  for (const u of data.users) users.push([u.id, ...u.taste.map(fmt)].join(","));
  const ratings = ["user,movie,rating"];
  for (const r of data.ratings) ratings.push(`${r.user},${r.movie},${r.rating}`);
  return { movies: movies.join("\n") + "\n", users: users.join("\n") + "\n", ratings: ratings.join("\n") + "\n" };
}

/** Generate and write movies.csv, users.csv and ratings.csv into `dir`; returns the data set. */
export function writeDataset(dir: string, options: Partial<DatasetOptions> = {}): Dataset {
  const data = generate(options);
  const csv = toCsv(data);
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(csv)) writeFileSync(join(dir, `${name}.csv`), text);
  return data;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opts: Partial<DatasetOptions> = {};
  let out = fileURLToPath(new URL(".", import.meta.url));
  for (let i = 0; i < args.length; i++) {
    const flag = args[i].replace(/^--/, "");
    if (["seed", "users", "movies", "ratingsPerUser"].includes(flag)) opts[flag as keyof DatasetOptions] = Number(args[++i]);
    else out = resolve(args[i]);
  }
  const data = writeDataset(out, opts);
  console.log(`wrote ${data.movies.length} movies, ${data.users.length} users, ${data.ratings.length} ratings to ${out}`);
}
