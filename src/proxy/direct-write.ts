import type { Socket } from "node:net";
import { getSystemErrorName } from "node:util";

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
