import { Readable } from "node:stream";
import type Docker from "dockerode";
import { BuildError } from "../../errors.ts";
import type { VariantConfig } from "../../config/index.ts";
import { readBuildContext } from "./context.ts";
import { ImageNotFoundError, LABEL, statusOf } from "./client.ts";

/** One JSON message of the classic builder's output stream. */
interface BuildMessage {
  stream?: string;
  status?: string;
  error?: string;
  errorDetail?: { message?: string; code?: number };
  aux?: { ID?: string };
}

/** The image tag for a build context: `abgate/<experiment>-<variant>:<first 12 hex of the content hash>`. */
export function imageTag(experiment: string, variant: string, hash: string): string {
  return `abgate/${experiment}-${variant}:${hash.slice(0, 12)}`;
}

export async function imageExists(docker: Docker, ref: string): Promise<boolean> {
  try {
    await docker.getImage(ref).inspect();
    return true;
  } catch (err) {
    if (statusOf(err) === 404) return false;
    throw err;
  }
}

/**
 * Read the builder's newline-delimited JSON and resolve when it ends. Every output line goes to `onLine`;
 * the lines since the last `Step n/m` are kept so that a failure can show the failing step's own output.
 */
function followBuild(stream: NodeJS.ReadableStream, onLine: (line: string) => void): Promise<{ error?: string; stepOutput: string[] }> {
  return new Promise((resolve, reject) => {
    let pending = "";
    let step: string[] = [];
    let error: string | undefined;
    const handle = (text: string): void => {
      if (!text.trim()) return;
      let msg: BuildMessage;
      try {
        msg = JSON.parse(text) as BuildMessage;
      } catch {
        msg = { stream: text };
      }
      if (msg.error || msg.errorDetail) {
        error = msg.errorDetail?.message ?? msg.error;
        return;
      }
      const out = msg.stream ?? msg.status;
      if (out === undefined) return;
      // the classic builder paints a RUN step's stderr red with ANSI escapes: keep the text, drop the paint
      for (const line of out.replace(/\x1b\[[0-9;]*m/g, "").split(/\r?\n/)) {
        if (!line.trim()) continue;
        if (/^Step \d+\/\d+ :/.test(line)) step = [];
        step.push(line);
        onLine(line);
      }
    };
    stream.on("data", (chunk: Buffer | string) => {
      pending += chunk.toString();
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        handle(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    });
    stream.on("end", () => {
      handle(pending);
      resolve({ error, stepOutput: step });
    });
    stream.on("error", reject);
  });
}

export interface ResolvedImage {
  image: string;
  /** false when the tag already existed (a content-hash cache hit) or an `image:` was given */
  built: boolean;
}

/**
 * Make sure a variant's image exists: `build:` contexts are built (skipped when the content-hash tag already
 * exists); `image:` is used as it is and pulled only when missing locally.
 */
export async function resolveImage(
  docker: Docker,
  experiment: string,
  variant: VariantConfig,
  onProgress: (line: string) => void = () => {},
): Promise<ResolvedImage> {
  const say = (line: string): void => onProgress(`[${variant.name}] ${line}`);
  if (variant.build === undefined) {
    const image = variant.image!;
    if (await imageExists(docker, image)) return { image, built: false };
    say(`pulling ${image}`);
    try {
      const stream = await docker.pull(image);
      await new Promise<void>((resolve, reject) =>
        docker.modem.followProgress(stream, (err: Error | null) => (err ? reject(err) : resolve())),
      );
    } catch (cause) {
      throw new ImageNotFoundError(`image ${image} (variant ${variant.name}) is not on this host and could not be pulled: ${(cause as Error).message}`, { cause });
    }
    return { image, built: false };
  }
  const ctx = readBuildContext(variant.build, { dockerfile: variant.dockerfile, buildArgs: variant.buildArgs });
  const tag = imageTag(experiment, variant.name, ctx.hash);
  if (await imageExists(docker, tag)) {
    say(`image ${tag} is up to date (context unchanged), build skipped`);
    return { image: tag, built: false };
  }
  say(`building ${tag} from ${variant.build} (${ctx.files.length} files)`);
  let result: { error?: string; stepOutput: string[] };
  try {
    const stream = await docker.buildImage(Readable.from([ctx.tar]) as unknown as NodeJS.ReadableStream, {
      t: tag,
      dockerfile: variant.dockerfile ?? "Dockerfile",
      buildargs: variant.buildArgs,
      labels: { [LABEL.experiment]: experiment, [LABEL.variant]: variant.name },
      rm: true,
      forcerm: true,
    });
    result = await followBuild(stream, say);
  } catch (cause) {
    // the daemon refuses some builds up front (e.g. a Dockerfile syntax error) with an HTTP error instead of a stream
    const message = (cause as Error).message;
    throw new BuildError(`building variant ${variant.name} from ${variant.build} failed: ${message}`, message, { cause });
  }
  if (result.error !== undefined) {
    const output = [...result.stepOutput, result.error].join("\n");
    // the message stays one line; the CLI prints `output` (the failing step and what it printed) below it
    throw new BuildError(`building variant ${variant.name} from ${variant.build} failed: ${result.error}`, output);
  }
  if (!(await imageExists(docker, tag))) {
    throw new BuildError(`building variant ${variant.name} finished without producing ${tag}`, result.stepOutput.join("\n"));
  }
  say(`built ${tag}`);
  return { image: tag, built: true };
}
