import type { AddressInfo } from "node:net";
import { createServer, type Server } from "node:http";
import { validateConfig } from "../../config/index.ts";
import { engineConformance } from "../conformance.ts";
import { StaticEngine } from "./index.ts";

/** A replica that runs outside abgate, as the suite wants it: answers with its variant and port. */
async function startReplica(variant: string): Promise<{ server: Server; url: string }> {
  let port = 0;
  const server = createServer((_req, res) => {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ variant, port }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  port = (server.address() as AddressInfo).port;
  return { server, url: `http://127.0.0.1:${port}` };
}

// The static engine starts nothing and watches nothing: no restart, no removal to report, and its stop leaves the
// replicas answering.
engineConformance(
  "static",
  async (_t, variants) => {
    const replicas = await Promise.all(variants.map((v) => Promise.all(Array.from({ length: v.replicas }, () => startReplica(v.name)))));
    const config = validateConfig({
      experiment: "conformance",
      engine: "static",
      variants: variants.map((v, i) => ({ name: v.name, urls: replicas[i]!.map((r) => r.url) })),
    });
    return {
      engine: new StaticEngine(config),
      async dispose() {
        for (const { server } of replicas.flat()) {
          server.closeAllConnections();
          await new Promise<void>((resolve) => server.close(() => resolve()));
        }
      },
    };
  },
  { kind: "static", startsReplicas: false, restartsReplicas: false, reportsRemoval: false, timeoutMs: 5_000, quietMs: 200 },
);
