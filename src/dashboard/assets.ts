import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

/** One built file, held in memory with its gzip twin (the bundle is tens of kB; reading it per request is waste). */
export interface Asset {
  name: string;
  contentType: string;
  body: Buffer;
  gzip: Buffer;
  etag: string;
}

/** What scripts/build-dashboard.mjs writes next to the bundle. */
export interface Manifest {
  js: string;
  css: string;
}

export interface AssetBundle {
  dir: string;
  manifest: Manifest;
  files: Map<string, Asset>;
}

const TYPES: Record<string, string> = {
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".svg": "image/svg+xml",
};

/**
 * Where the built bundle lives. From source (tsx) it sits beside this file; from the tsup build (dist/*.js) this
 * module's URL is in dist/, and the bundle is still under src/dashboard/assets/ (the package ships `src`).
 */
export function assetDirCandidates(moduleUrl: string = import.meta.url): string[] {
  return [
    fileURLToPath(new URL("./assets/", moduleUrl)),
    fileURLToPath(new URL("../src/dashboard/assets/", moduleUrl)),
    fileURLToPath(new URL("../../src/dashboard/assets/", moduleUrl)),
  ];
}

/** Loads the bundle from the first directory holding a manifest.json; null when the dashboard was never built. */
export function loadAssets(dirs: readonly string[] = assetDirCandidates()): AssetBundle | null {
  for (const dir of dirs) {
    const manifestPath = join(dir, "manifest.json");
    if (!existsSync(manifestPath)) continue;
    const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as Manifest;
    const files = new Map<string, Asset>();
    for (const name of readdirSync(dir)) {
      const contentType = TYPES[extname(name)];
      if (!contentType) continue;
      const body = readFileSync(join(dir, name));
      files.set(name, {
        name,
        contentType,
        body,
        gzip: gzipSync(body, { level: 9 }),
        etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`,
      });
    }
    return { dir, manifest, files };
  }
  return null;
}
