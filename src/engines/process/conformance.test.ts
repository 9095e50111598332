import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { validateConfig } from "../../config/index.ts";
import { engineConformance, REPLICA_SERVER } from "../conformance.ts";
import { ProcessEngine } from "./index.ts";

const BACKOFF_MS = 50;

engineConformance(
  "process",
  async (_t, variants) => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-proc-conf-"));
    const config = validateConfig(
      {
        experiment: "conformance",
        engine: "process",
        ports: { base: 26300 },
        variants: variants.map((v) => ({ name: v.name, replicas: v.replicas, command: ["node", "-e", REPLICA_SERVER], env: { VARIANT: v.name } })),
      },
      dir,
    );
    const engine = new ProcessEngine(config, { backoffMs: BACKOFF_MS, log: () => {} });
    return {
      engine,
      // (the replica's own pid: the registering shell execs the command)
      async kill(endpoint) {
        const pid = engine.pids()[endpoint.id];
        if (pid === undefined) throw new Error(`${endpoint.id} has no pid`);
        process.kill(pid, "SIGKILL");
      },
      async dispose() {
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  { kind: "process", startsReplicas: true, restartsReplicas: true, reportsRemoval: false, timeoutMs: 10_000, quietMs: 10 * BACKOFF_MS },
);
