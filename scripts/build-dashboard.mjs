#!/usr/bin/env node
// Builds the dashboard page (Preact + uPlot) into src/dashboard/assets/: content-hashed app-<hash>.js and
// app-<hash>.css plus manifest.json, which src/dashboard/assets.ts reads. Run by `npm install` (prepare), so
// nothing is fetched when the dashboard is served. `--quiet` prints nothing but errors.
import { build } from "esbuild";
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync, readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const outdir = join(root, "src/dashboard/assets");
const quiet = process.argv.includes("--quiet");

mkdirSync(outdir, { recursive: true });
// Old hashed files would otherwise pile up build after build; .gitignore stays.
for (const name of readdirSync(outdir)) if (name !== ".gitignore") rmSync(join(outdir, name));

const result = await build({
  absWorkingDir: root,
  entryPoints: { app: "src/dashboard/page/main.tsx" },
  outdir,
  entryNames: "[name]-[hash]",
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome100", "firefox100", "safari15"],
  platform: "browser",
  jsx: "automatic",
  jsxImportSource: "preact",
  legalComments: "none",
  metafile: true,
  logLevel: quiet ? "error" : "warning",
  define: { "process.env.NODE_ENV": '"production"' },
});

const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = outputs.find((n) => n.endsWith(".js"));
const css = outputs.find((n) => n.endsWith(".css"));
if (!js || !css) throw new Error(`build-dashboard: expected a .js and a .css output, got ${outputs.join(", ")}`);
writeFileSync(join(outdir, "manifest.json"), JSON.stringify({ js, css }, null, 2) + "\n");

if (!quiet) {
  let raw = 0;
  let zipped = 0;
  for (const name of [js, css]) {
    const body = readFileSync(join(outdir, name));
    raw += statSync(join(outdir, name)).size;
    zipped += gzipSync(body, { level: 9 }).length;
    console.log(`  ${name}  ${(body.length / 1024).toFixed(1)} kB  (gzip ${(gzipSync(body, { level: 9 }).length / 1024).toFixed(1)} kB)`);
  }
  console.log(`dashboard built into src/dashboard/assets: ${(raw / 1024).toFixed(1)} kB, ${(zipped / 1024).toFixed(1)} kB gzip`);
}
