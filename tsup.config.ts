import { defineConfig } from "tsup";

export default defineConfig({
  // sqlite-writer: the SQLite writer thread's entry (src/store/sqlite/writer-thread.ts loads it by that name)
  entry: { index: "src/index.ts", "stats/index": "src/stats/index.ts", cli: "src/cli/main.ts", "sqlite-writer": "src/store/sqlite/writer-worker.ts" },
  format: ["esm"],
  target: "node20",
  dts: { entry: { index: "src/index.ts", "stats/index": "src/stats/index.ts" } },
  clean: true,
  sourcemap: true,
  splitting: true,
});
