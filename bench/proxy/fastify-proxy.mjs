/**
 * The "usual way of writing a Node proxy" baseline: fastify + @fastify/reply-from over two backends
 * (an array `base` makes reply-from use undici's BalancedPool). No logging, as in a tuned production setup.
 * Plain JavaScript so that the type check of the repository does not depend on these dev-only packages.
 * Usage: node bench/proxy/fastify-proxy.mjs <port> <backendUrl> <backendUrl>
 */
import Fastify from "fastify";
import replyFrom from "@fastify/reply-from";

const [portArg, ...backends] = process.argv.slice(2);
if (!portArg || backends.length < 2) {
  console.error("usage: fastify-proxy.mjs <port> <backendUrl> <backendUrl>");
  process.exit(2);
}

const app = Fastify({ logger: false });
await app.register(replyFrom, { base: backends, undici: { connections: 64, pipelining: 1 } });
app.all("/*", (request, reply) => {
  // reply-from resolves the path against the balanced base; the user header is passed through untouched.
  return reply.from(request.url);
});
await app.listen({ port: Number(portArg), host: "127.0.0.1" });
