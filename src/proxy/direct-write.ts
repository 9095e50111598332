import { Socket } from "node:net";
import { getSystemErrorName } from "node:util";
import { runBeforeEachSlice } from "../turn.ts";

/**
 * Writing a string straight to a socket's libuv handle, the way `net.Socket` itself does at the bottom of
 * `socket.write`, but without the Writable stream around it.
 *
 * The hot path writes two strings per proxied request: the request head to the replica and the whole response
 * (head and small body) to the client. Through `socket.write` each went through the stream's bookkeeping
 * (`writeOrBuffer`, `_write`, `createWriteWrap`, `handleWriteReq`, the after-write tick): about 5% of the
 * proxy's CPU in a profile under wrk (bench/proxy). Here a write is one call into the handle. That matters only
 * where nothing else is queued on the stream, so this is used only when the stream has nothing buffered, is not
 * corked and is open; otherwise, or when the handle cannot be reached, it falls back to `socket.write`. Byte order
 * is kept either way: both paths end in the same libuv write queue, in call order, and a direct write that the
 * kernel could not take at once is copied and queued there by Node's StreamBase like any other.
 *
 * The handle API (`process.binding("stream_wrap")`: WriteWrap, streamBaseState) is Node's internal one, the same
 * this project already relies on to parse client requests with `HTTPParser.consume`; should a Node version drop
 * it, `directWrite` is `null` and every write takes the stream path.
 */
interface StreamBinding {
  WriteWrap: new () => WriteReq;
  streamBaseState: Int32Array;
  kLastWriteWasAsync: number;
}

interface WriteReq {
  handle: unknown;
  oncomplete: (this: WriteReq, status: number) => void;
  async: boolean;
  bytes: number;
  buffer: null;
  socket?: Socket;
}

interface SocketHandle {
  writeLatin1String(req: WriteReq, data: string): number;
}

function loadBinding(): StreamBinding | null {
  try {
    const b = (process as unknown as { binding(name: string): StreamBinding }).binding("stream_wrap");
    return typeof b.WriteWrap === "function" && b.streamBaseState instanceof Int32Array && typeof b.kLastWriteWasAsync === "number" ? b : null;
  } catch {
    return null;
  }
}

const binding = loadBinding();

/** A direct write that libuv finished later: only a failure matters, and it ends the socket as a failed write would. */
function onComplete(this: WriteReq, status: number): void {
  if (status < 0 && this.socket && !this.socket.destroyed) {
    const code = getSystemErrorName(status);
    const err = new Error(`write ${code}`) as NodeJS.ErrnoException;
    err.errno = status;
    err.code = code;
    err.syscall = "write";
    this.socket.destroy(err);
  }
}

/**
 * Writes `data` (latin1) to `socket`. Returns false only when it went the stream's way and the stream asked for
 * backpressure; callers use it for complete messages (a request head, a whole small response), where no more
 * writes follow that would need to wait.
 */
export function writeLatin1(socket: Socket, data: string): boolean {
  if ((socket as Deferring)[PENDING] !== undefined) sendPending(socket as Deferring);
  return writeNow(socket, data);
}

function writeNow(socket: Socket, data: string): boolean {
  const handle = (socket as unknown as { _handle: SocketHandle | null })._handle;
  if (
    binding === null ||
    handle === null ||
    socket.writableLength !== 0 ||
    socket.writableCorked !== 0 ||
    socket.connecting ||
    socket.destroyed ||
    socket.writableEnded
  ) {
    return socket.write(data, "latin1");
  }
  const req = spareReq ?? newReq(binding);
  req.handle = handle;
  const err = handle.writeLatin1String(req, data);
  if (err !== 0) {
    // Nothing was written; the stream path reports the error as a write error, with Node's own message. The
    // request object may have been wrapped and disposed on the way: it is not used again.
    spareReq = null;
    return socket.write(data, "latin1");
  }
  if (binding.streamBaseState[binding.kLastWriteWasAsync]) {
    // libuv holds this request until the write completes: the next write needs a request object of its own.
    req.socket = socket;
    spareReq = null;
  } else spareReq = req;
  return true;
}

/**
 * A write the kernel takes whole never reaches the request object (StreamBase::WriteString returns before it
 * wraps one), so one object serves every such write; a new one is made only after a write went asynchronous.
 */
let spareReq: WriteReq | null = null;

function newReq(b: StreamBinding): WriteReq {
  const req = new b.WriteWrap();
  req.oncomplete = onComplete;
  req.async = false;
  req.bytes = 0;
  req.buffer = null;
  return req;
}

/**
 * Writes that wait for the end of the event loop's turn: the whole messages of the hot path (a request head to a
 * replica, a whole small response to a client) are handed to the kernel together, after every read of the turn has
 * been handled, instead of one at a time between the reads.
 *
 * Why: a write that wakes a peer asleep in `epoll_wait` on the other core costs the writer the wake-up (an
 * inter-processor interrupt, which on this virtual machine is about a fifth of the proxy's CPU in `perf`:
 * `pvm_irq_enable` under `sock_def_readable`). Written one by one, every response woke wrk and every request head
 * the replica's nginx, each of which had gone back to sleep after the previous one. Written together, the first
 * write wakes the peer and the rest find it awake. The number of system calls is the same.
 * bench/proxy/rounds.sh (each configuration alone on core 0, medians of 8 rounds): 23,370 against 20,610 req/s
 * with exposure logging on, p99 7.5 against 7.6 ms.
 *
 * A deferred write costs a request at most the rest of the turn it was answered in, and less in a busy turn (see
 * MAX_WAITING); a slice of a long job does not hold it back (src/turn.ts). Byte order is kept: a socket
 * that may hold a deferred write (`allowDeferredWrites`) sends it before any other write or end on it (its `write`
 * and `end` are wrapped), and several deferred writes to one socket join in call order. A socket destroyed before
 * the turn ends drops what waits for it, as a destroyed socket drops its queued writes.
 */
const PENDING = Symbol("abgate.pendingWrite");
type Deferring = Socket & { [PENDING]: string | undefined };

const streamWrite = Socket.prototype.write;
const streamEnd = Socket.prototype.end;

/** `write` of a socket that may hold a deferred write: that one goes first. */
function writeAfterPending(this: Deferring, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
  if (this[PENDING] !== undefined) sendPending(this);
  return (streamWrite as (c: unknown, e?: unknown, cb?: unknown) => boolean).call(this, chunk, encoding, cb);
}

/** `end` of a socket that may hold a deferred write: that one goes before the FIN. */
function endAfterPending(this: Deferring, chunk?: unknown, encoding?: unknown, cb?: unknown): Socket {
  if (this[PENDING] !== undefined) sendPending(this);
  return (streamEnd as (c?: unknown, e?: unknown, cb?: unknown) => Socket).call(this, chunk, encoding, cb);
}

/** Lets `writeLatin1Soon` defer writes to `socket`; call once, when the socket is made. */
export function allowDeferredWrites(socket: Socket): void {
  const s = socket as Deferring;
  s[PENDING] = undefined;
  socket.write = writeAfterPending as Socket["write"];
  socket.end = endAfterPending as Socket["end"];
}

/** Sockets with a deferred write, in the order of their first one this turn (a socket may be listed twice). */
const waiting: Deferring[] = [];
let flushScheduled = false;

/**
 * At most this many sockets wait at once: the 16th deferred write sends them all. A turn that reads a burst (64
 * requests at once, say) would otherwise hold the first answer until the last request is handled; this bounds
 * the wait to about 16 requests' handling. bench/proxy/rounds.sh -r 6 with this limit as a variable: 1 (no
 * waiting) 19,251 req/s, 4: 20,621, 16: 22,406, unbounded: 22,497.
 */
const MAX_WAITING = 16;

function sendPending(s: Deferring): void {
  const data = s[PENDING]!;
  s[PENDING] = undefined;
  if (!s.destroyed) writeNow(s, data);
}

/**
 * Sends every deferred write now. It runs by itself at the end of each turn of the event loop, and before each slice
 * of a long job (src/turn.ts), which would otherwise run first.
 */
export function flushDeferredWrites(): void {
  // (a write here is never deferred, so the list does not grow while it is walked)
  for (let i = 0; i < waiting.length; i++) {
    const s = waiting[i]!;
    if (s[PENDING] === undefined) continue;
    try {
      sendPending(s);
    } catch (err) {
      // (not known to happen: a write that fails reports it on the socket) One socket's failure must not keep
      // the others' answers, nor escape into the event loop.
      s.destroy(err as Error);
    }
  }
  waiting.length = 0;
}
runBeforeEachSlice(flushDeferredWrites);

function atTurnEnd(): void {
  flushScheduled = false;
  flushDeferredWrites();
}

/**
 * `writeLatin1`, at the end of this turn of the event loop, for a socket prepared by `allowDeferredWrites`. For
 * whole messages only, as `writeLatin1`: it always reports no backpressure.
 */
export function writeLatin1Soon(socket: Socket, data: string): boolean {
  const s = socket as Deferring;
  const pending = s[PENDING];
  if (pending !== undefined) {
    s[PENDING] = pending + data;
    return true;
  }
  if (socket.destroyed) return writeNow(socket, data);
  s[PENDING] = data;
  if (waiting.push(s) >= MAX_WAITING) {
    flushDeferredWrites();
    return true;
  }
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(atTurnEnd);
  }
  return true;
}
