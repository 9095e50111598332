/**
 * What a small write costs the proxy's process through `socket.write` and through `writeLatin1`
 * (src/proxy/direct-write.ts), which the proxy uses for a request head and a whole small response.
 *
 * One loopback connection inside this process: the client side writes a 100-byte response-like string, the
 * server side reads and drops it, so each write is counted with its read. The two ways take turns in phases of
 * 20,000 writes (a turn of the event loop every 32), and the CPU time of the process (user + system) per write is
 * compared phase by phase: this machine's speed drifts too much for separate runs.
 *
 *   node --import tsx bench/proxy/socket-write.ts [--phases 12] [--writes 20000]
 */
import { connect, createServer, type AddressInfo } from "node:net";
import { once } from "node:events";
import { parseArgs } from "node:util";
import { writeLatin1 } from "../../src/proxy/direct-write.ts";

const { values } = parseArgs({ options: { phases: { type: "string", default: "12" }, writes: { type: "string", default: "20000" } } });
const phases = Number(values.phases);
const writes = Number(values.writes);

const server = createServer((s) => s.on("data", () => {})).listen(0, "127.0.0.1");
await once(server, "listening");
const socket = connect((server.address() as AddressInfo).port, "127.0.0.1");
await once(socket, "connect");
const message =
  "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-abgate-variant: control\r\nx-abgate-request-id: 5vJd2kQx-1a2b\r\n\r\nok";

async function phase(direct: boolean): Promise<number> {
  const before = process.cpuUsage();
  for (let i = 0; i < writes; i++) {
    if (direct) writeLatin1(socket, message);
    else socket.write(message, "latin1");
    if ((i & 31) === 31) await new Promise((resolve) => setImmediate(resolve));
  }
  const used = process.cpuUsage(before);
  return (used.user + used.system) / writes;
}

const stream: number[] = [];
const direct: number[] = [];
await phase(false);
await phase(true);
for (let p = 0; p < phases; p++) {
  // rotate which goes first, so neither always follows the other
  if (p % 2 === 0) {
    stream.push(await phase(false));
    direct.push(await phase(true));
  } else {
    direct.push(await phase(true));
    stream.push(await phase(false));
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const ratios = direct.map((d, i) => d / stream[i]!);
console.log(`CPU µs per write (with its read), median of ${phases} phases of ${writes}:`);
console.log(`  socket.write  ${median(stream).toFixed(2)}`);
console.log(`  writeLatin1   ${median(direct).toFixed(2)}`);
console.log(`  ratio writeLatin1/socket.write: median ${median(ratios).toFixed(2)} (per phase: ${ratios.map((r) => r.toFixed(2)).join(" ")})`);
socket.destroy();
server.close();
