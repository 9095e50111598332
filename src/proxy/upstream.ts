import { connect, type Socket } from "node:net";
import { UpstreamError, type UpstreamFailure } from "../errors.ts";
import { ABGATE_RESPONSE_HEADERS, HOP_BY_HOP, TCHAR, connectionTokens, onlyFrom } from "./headers.ts";
import { allowDeferredWrites, writeLatin1Soon } from "./direct-write.ts";
import { expireAfterReads } from "./deadlines.ts";

/**
 * The upstream half of the proxy, written by hand: pooled keep-alive sockets per replica and a small HTTP/1.1
 * response parser. Node's ClientRequest/Agent pair (and undici) cost more per request than the whole server side;
 * a proxy only needs status, headers and body framing, so that is all this parses. Bodies are passed through as
 * the socket delivers them, never buffered.
 */

/** Receives one response. Every call happens at most once per exchange, except onData. */
export interface UpstreamSink {
  /**
   * `fields` are the header lines to pass on, each ending in CRLF, as the replica wrote them: without hop-by-hop ones
   * (RFC 9110 §7.6.1) and without abgate's own (ABGATE_RESPONSE_HEADERS); `dated` says whether one of them is Date.
   * `contentLength` is -1 when unknown.
   */
  onHead(status: number, statusText: string, fields: string, contentLength: number, dated: boolean): void;
  /**
   * A body chunk; return false when the receiver is full (call `conn.resume()` when it drains). A big chunk may be
   * one of a pool's buffers (isPooledPiece): give it to releaseBodyPiece once its write has completed or failed.
   */
  onData(chunk: Buffer): boolean;
  /**
   * The response is complete; `last` is its final body piece when it had not been passed to onData. `last` is a view
   * of the read buffer, which the next read overwrites: copy it to keep it past the call.
   */
  onEnd(last?: Buffer): void;
  /**
   * A read ended after the head of a body without a length (chunked, or until close), with the response not
   * complete: a head held back to go out with the first body piece must go now, or a stream (server-sent events,
   * tokens of a language model) that sends its head and then waits would reach the client only with its first event.
   */
  onReadEnd?(): void;
  /**
   * An interim (1xx) answer other than 100 and 101, as HTTP/1.1 head text without hop-by-hop fields (103 Early
   * Hints, 102 Processing): RFC 9110 §15.2 has a proxy forward those it did not ask for. Not for an HTTP/1.0 client.
   */
  onInterim?(head: string): void;
  /** `beforeResponse`: no byte of the response had arrived; `connected`: the TCP connection had been established */
  onError(err: UpstreamError, beforeResponse: boolean, connected: boolean): void;
  /** the client speaks HTTP/1.0, and so cannot be sent a transfer coding (RFC 9112 §6.1); read only when one comes */
  readonly http10Client?: boolean;
}

const enum State {
  Idle,
  Head,
  BodyLength,
  BodyChunked,
  BodyUntilClose,
}

const enum Chunk {
  Size,
  SizeExt,
  SizeLf,
  Data,
  DataCr,
  DataLf,
  Trailer,
  TrailerLf,
  TrailerLineStart,
}

export const MAX_HEAD_BYTES = 64 * 1024;

/**
 * A CR or LF outside a CRLF pair (RFC 9112 §2.2). Relayed, it would be a line break to some clients: header
 * injection. A loop of indexOf over the few line ends is cheaper than a regular expression over the head.
 */
export function hasBareCrOrLf(head: string): boolean {
  for (let i = head.indexOf("\n"); i !== -1; i = head.indexOf("\n", i + 1)) if (i === 0 || head.charCodeAt(i - 1) !== 13) return true;
  for (let i = head.indexOf("\r"); i !== -1; i = head.indexOf("\r", i + 1)) if (head.charCodeAt(i + 1) !== 10) return true;
  return false;
}
const CRLFCRLF = Buffer.from("\r\n\r\n");

/**
 * Where a head whose lines end in LF (or a mix of CRLF and LF) ends: `end` before its last line's end, `consumed`
 * after the blank line. Null when there is no blank line yet.
 */
export function bareLfHeadEnd(data: Buffer): { end: number; consumed: number } | null {
  for (let i = data.indexOf(10); i !== -1; i = data.indexOf(10, i + 1)) {
    let next = i + 1;
    if (data[next] === 13) next++;
    if (data[next] === 10) return { end: i > 0 && data[i - 1] === 13 ? i - 1 : i, consumed: next + 1 };
  }
  return null;
}

/** What a response header line is to the parser. */
const enum Field {
  /** passed on, and nothing to act on */
  Other,
  Date,
  ContentLength,
  TransferEncoding,
  Connection,
  /** not passed on: the other hop-by-hop fields, and abgate's own */
  Dropped,
}

/** The names the parser acts on (lower case), by length: most names (Server, Content-Type...) have no entry. */
const FIELDS_BY_LENGTH: { name: string; kind: Field }[][] = [];
for (const [name, kind] of [
  ["date", Field.Date],
  ["content-length", Field.ContentLength],
  ["transfer-encoding", Field.TransferEncoding],
  ["connection", Field.Connection],
  ...[...HOP_BY_HOP, ...ABGATE_RESPONSE_HEADERS].map((n) => [n, Field.Dropped] as const),
] as const) {
  if (FIELDS_BY_LENGTH[name.length]?.some((f) => f.name === name)) continue;
  (FIELDS_BY_LENGTH[name.length] ??= []).push({ name, kind });
}

/** What the field named by `head[start, start + length)` is, in any letter case, without slicing the name out. */
function fieldKind(head: string, start: number, length: number): Field {
  const candidates = FIELDS_BY_LENGTH[length];
  if (candidates === undefined) return Field.Other;
  for (let k = 0; k < candidates.length; k++) {
    const name = candidates[k]!.name;
    let i = 0;
    for (; i < length; i++) {
      const c = head.charCodeAt(start + i);
      const n = name.charCodeAt(i);
      // (a letter of `name` also matches its upper case; "-" only itself)
      if (c !== n && (n < 97 || n > 122 || (c | 32) !== n)) break;
    }
    if (i === length) return candidates[k]!.kind;
  }
  return Field.Other;
}

/** Header lines (each ending in CRLF) without those whose lower-cased name is in `names`. */
function withoutFields(fields: string, names: ReadonlySet<string>): string {
  let kept = "";
  for (let start = 0; start < fields.length; ) {
    const end = fields.indexOf("\r\n", start) + 2;
    if (!names.has(fields.slice(start, fields.indexOf(":", start)).toLowerCase())) kept += fields.slice(start, end);
    start = end;
  }
  return kept;
}

/**
 * `s` without the optional whitespace around a field value: spaces and tabs only (RFC 9110 §5.5). String.prototype.trim
 * also takes \v, \f and U+00A0 away, so `Content-Length: 5\v` framed 5 bytes here while the line, passed on as written,
 * was refused or read otherwise by the client.
 */
function trimOws(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && (s.charCodeAt(start) === 32 || s.charCodeAt(start) === 9)) start++;
  while (end > start && (s.charCodeAt(end - 1) === 32 || s.charCodeAt(end - 1) === 9)) end--;
  return start === 0 && end === s.length ? s : s.slice(start, end);
}

/** 1 to `maxDigits` ASCII digits and nothing else. */
function isDigits(value: string, maxDigits: number): boolean {
  if (value.length === 0 || value.length > maxDigits) return false;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

export interface UpstreamPoolOptions {
  connectTimeoutMs: number;
  /** time without any byte from the replica while a response is awaited */
  responseTimeoutMs: number;
  /** idle keep-alive sockets kept per replica */
  maxIdle?: number;
  /**
   * a pooled socket idle longer than this is not reused (default 1,000). Replicas close idle keep-alive connections
   * on their own timers (gunicorn after 2 s, uvicorn and Node after 5 s), and a request sent as one closes may have
   * reached the replica: only idempotent requests are sent again then, so a POST would get a 502. A new connection
   * to a replica on this host costs far less than that risk. Ages are measured to SWEEP_INTERVAL_MS.
   */
  maxIdleMs?: number;
}

export class UpstreamConnection {
  readonly socket: Socket;
  readonly pool: UpstreamPool;
  /** true once the socket served a previous exchange (a failure may then just be a stale keep-alive socket) */
  reused = false;
  /** when it went back to the pool (idleClockMs(): Date.now() to the sweeper's tick) */
  idleSinceMs = 0;
  #connected = false;
  #sink: UpstreamSink | null = null;
  #state = State.Idle;
  #noBody = false;
  #gotBytes = false;
  #requestDone = false;
  #keepAlive = true;
  #paused = false;
  #remaining = 0;
  #chunkState = Chunk.Size;
  #sizeDigits = 0;
  #headParts: Buffer[] = [];
  #headLength = 0;
  #dead = false;
  /** clock time after which the sweeper fails the exchange (connect or response timeout) */
  deadlineMs = 0;
  #opts: UpstreamPoolOptions;

  constructor(pool: UpstreamPool, host: string, port: number, opts: UpstreamPoolOptions) {
    this.pool = pool;
    this.#opts = opts;
    // Reads land in one shared buffer and reach #onData without the stream machinery (Node's `onread`): no
    // allocation and no 'data' event per read. Whatever outlives the call (a partial head, body pieces handed to
    // the client side, which may queue them) is copied first.
    const socket = connect({
      host,
      port,
      noDelay: true,
      onread: {
        buffer: READ_BUFFER,
        callback: (n: number, buf: Uint8Array) => {
          this.#onData((buf as Buffer).subarray(0, n));
          return true; // pausing is explicit (pause()), never implied by this return value
        },
      },
    });
    this.socket = socket;
    allowDeferredWrites(socket);
    socket.on("connect", () => {
      this.#connected = true;
      if (this.#sink) this.deadlineMs = Date.now() + opts.responseTimeoutMs;
    });
    socket.on("data", (buf: Buffer) => this.#onData(buf));
    socket.on("error", (err: NodeJS.ErrnoException) => this.#fail(this.#connected ? "reset" : "connect", err));
    socket.on("end", () => this.#onEnd());
    socket.on("close", () => this.#onClose());
  }

  get busy(): boolean {
    return this.#sink !== null;
  }

  /** Start an exchange: write the request head (and maybe a first body piece); more body goes via `socket.write`. */
  send(head: string, sink: UpstreamSink, noResponseBody: boolean, requestDone: boolean): void {
    this.#sink = sink;
    this.#state = State.Head;
    this.#noBody = noResponseBody;
    this.#gotBytes = false;
    this.#requestDone = requestDone;
    this.#keepAlive = true;
    this.#paused = false;
    this.#headParts.length = 0;
    this.#headLength = 0;
    this.deadlineMs = Date.now() + (this.#connected ? this.#opts.responseTimeoutMs : this.#opts.connectTimeoutMs);
    busy.add(this);
    ensureSweeper();
    writeLatin1Soon(this.socket, head);
  }

  /** Request body bytes went out: the replica is not silent, we are still talking. */
  touch(): void {
    if (this.#connected) this.deadlineMs = Date.now() + this.#opts.responseTimeoutMs;
  }

  /** The proxy finished writing the request body. */
  requestEnded(): void {
    this.#requestDone = true;
  }

  pause(): void {
    if (!this.#paused) {
      this.#paused = true;
      this.socket.pause();
    }
  }
  resume(): void {
    if (this.#paused) {
      this.#paused = false;
      this.socket.resume();
    }
  }

  /** Abandon the exchange (client went away): the socket cannot be reused mid-response. */
  abort(): void {
    this.#sink = null;
    this.destroy();
  }

  destroy(): void {
    if (this.#dead) return;
    this.#dead = true;
    this.pool.forget(this);
    this.socket.destroy();
  }

  #fail(kind: UpstreamFailure, cause?: unknown, clientOnly = false): void {
    const sink = this.#sink;
    this.#sink = null;
    busy.delete(this);
    this.destroy();
    if (!sink) return;
    const code = (cause as NodeJS.ErrnoException | undefined)?.code;
    const msg = cause instanceof Error ? cause.message : kind;
    sink.onError(new UpstreamError(kind, `${kind}: ${msg}${code && !msg.includes(code) ? ` (${code})` : ""}`, { cause, clientOnly }), !this.#gotBytes, this.#connected);
  }

  /** Called by the sweeper once `deadlineMs` has passed. */
  expire(): void {
    if (!this.#sink) return void busy.delete(this);
    if (!this.#connected) return this.#fail("connect", new Error(`connect timeout to ${this.pool.address}`));
    if (this.#paused || (!this.#requestDone && this.socket.writableLength === 0)) {
      // The client is slow, not the replica: it does not read the response, or its request body is still coming and
      // the replica has taken every byte so far. Client-side timeouts bound both (the client's send deadline, and
      // requestTimeoutMs); a 504 here would blame, and eventually eject, a replica that is only waiting.
      this.deadlineMs = Date.now() + this.#opts.responseTimeoutMs;
      return;
    }
    this.#fail("timeout", new Error(`no answer from ${this.pool.address} in time`));
  }

  #onEnd(): void {
    if (this.#sink && this.#state === State.BodyUntilClose) return this.#finish(false);
    if (this.#sink) return this.#fail("reset", new Error(`${this.pool.address} closed the connection ${this.#gotBytes ? "mid-response" : "before answering"}`));
    this.destroy();
  }

  #onClose(): void {
    if (this.#sink) {
      if (this.#state === State.BodyUntilClose) return this.#finish(false);
      this.#fail("reset", new Error(`connection to ${this.pool.address} closed`));
    }
    this.#dead = true;
    this.pool.forget(this);
  }

  #finish(reusable: boolean, last?: Buffer): void {
    const sink = this.#sink!;
    this.#sink = null;
    busy.delete(this);
    // The receiver may have asked for a pause on the very last piece: a pooled socket must be flowing.
    this.resume();
    this.#state = State.Idle;
    if (reusable && this.#keepAlive && this.#requestDone && !this.#dead) {
      this.reused = true;
      this.pool.release(this);
    } else {
      this.destroy();
    }
    sink.onEnd(last);
  }

  #onData(buf: Buffer): void {
    if (!this.#sink) {
      // Bytes on an idle socket: the replica is out of step with us; never reuse it.
      this.destroy();
      return;
    }
    this.#gotBytes = true;
    if (!this.#paused) this.deadlineMs = Date.now() + this.#opts.responseTimeoutMs;
    let offset = 0;
    while (offset < buf.length && this.#sink) {
      switch (this.#state) {
        case State.Head:
          offset = this.#parseHead(buf, offset);
          if (offset < 0) return;
          break;
        case State.BodyLength: {
          const n = Math.min(this.#remaining, buf.length - offset);
          const start = offset;
          offset += n;
          this.#remaining -= n;
          if (this.#remaining === 0) {
            if (offset < buf.length) this.#keepAlive = false; // more bytes than announced: do not trust the socket
            // The last piece goes with the end: one write to the client instead of two. Not copied: a small one
            // (the usual whole body) goes out as text, and the receiver copies what it keeps.
            this.#finish(true, buf.subarray(start, offset));
            return;
          }
          if (!this.#sink.onData(bodyPiece(buf, start, offset))) this.pause();
          break;
        }
        case State.BodyChunked:
          offset = this.#parseChunked(buf, offset);
          if (offset < 0) return;
          break;
        case State.BodyUntilClose: {
          const piece = bodyPiece(buf, offset, buf.length);
          offset = buf.length;
          if (!this.#sink.onData(piece)) this.pause();
          break;
        }
        case State.Idle:
          this.destroy();
          return;
      }
    }
    // Only for bodies without a length, the shape of a stream: a replica that writes a sized answer's head and body
    // in two writes (uvicorn, h11) would otherwise cost two writes to the client for every answer. (Not reached on
    // the usual path either, where head and body came in one read and #finish let go of the sink.)
    if (this.#sink !== null && (this.#state === State.BodyChunked || this.#state === State.BodyUntilClose)) this.#sink.onReadEnd?.();
  }

  /** Returns the offset after the head, or -1 when more bytes are needed or the exchange ended. */
  #parseHead(buf: Buffer, offset: number): number {
    let data = offset === 0 ? buf : buf.subarray(offset);
    let searchFrom = 0;
    if (this.#headLength > 0) {
      searchFrom = Math.max(0, this.#headLength - 3);
      this.#headParts.push(data);
      data = Buffer.concat(this.#headParts);
      this.#headParts.length = 0;
    }
    let end = data.indexOf(CRLFCRLF, searchFrom);
    let consumed = end + 4;
    let head = "";
    let malformed = false;
    if (end !== -1 && end <= MAX_HEAD_BYTES) {
      head = data.toString("latin1", 0, end + 2);
      malformed = hasBareCrOrLf(head);
    }
    if (end === -1 || malformed || end > MAX_HEAD_BYTES) {
      // RFC 9112 §2.2: a recipient may take a lone LF for a line end, as nginx does; abgate passes the head on with
      // CRLFs. Sought only when the usual end is missing or comes after a lone LF, so well-formed heads pay nothing.
      const lf = bareLfHeadEnd(data);
      if (lf !== null && (end === -1 || lf.end < end) && lf.end <= MAX_HEAD_BYTES) {
        end = lf.end;
        consumed = lf.consumed;
        head = `${data.toString("latin1", 0, end).replace(/\r?\n/g, "\r\n")}\r\n`;
        malformed = hasBareCrOrLf(head);
      }
    }
    if (end === -1) {
      if (data.length > MAX_HEAD_BYTES) {
        this.#fail("protocol", new Error(`response head from ${this.pool.address} exceeds ${MAX_HEAD_BYTES} bytes`));
        return -1;
      }
      this.#headParts.push(Buffer.from(data)); // the read buffer is reused: keep a copy
      this.#headLength = data.length;
      return -1;
    }
    this.#headLength = 0;
    if (end > MAX_HEAD_BYTES) {
      this.#fail("protocol", new Error(`response head from ${this.pool.address} exceeds ${MAX_HEAD_BYTES} bytes`));
      return -1;
    }
    // A lone CR would let the replica smuggle extra header lines (or a second response) to the client; a NUL is
    // one of the characters a recipient MUST refuse or replace (RFC 9110 §5.5), and clients choke on it.
    if (malformed || head.indexOf("\0") !== -1) {
      this.#fail("protocol", new Error(`${this.pool.address} sent a control character in its response head`));
      return -1;
    }
    // bytes of `buf` used: the head may have started in an earlier packet
    const usedOfBuf = offset + consumed - (data.length - (buf.length - offset));

    // "HTTP/1.1 200 OK"; `head` ends with its last line's CRLF, so every line does
    const statusEnd = head.indexOf("\r\n");
    if (statusEnd < 12 || !head.startsWith("HTTP/1.") || head.charCodeAt(8) !== 32) {
      this.#fail("protocol", new Error(`${this.pool.address} did not answer HTTP/1.x: ${JSON.stringify(head.slice(0, Math.min(statusEnd, 40)))}`));
      return -1;
    }
    const d0 = head.charCodeAt(9) - 48;
    const d1 = head.charCodeAt(10) - 48;
    const d2 = head.charCodeAt(11) - 48;
    const status =
      d0 >= 1 && d0 <= 5 && d1 >= 0 && d1 <= 9 && d2 >= 0 && d2 <= 9 && (statusEnd === 12 || head.charCodeAt(12) === 32) ? d0 * 100 + d1 * 10 + d2 : NaN;
    if (!(status >= 100 && status <= 599)) {
      this.#fail("protocol", new Error(`${this.pool.address} answered status ${JSON.stringify(head.slice(9, 12))}`));
      return -1;
    }
    if (status === 101) {
      // abgate never asks this connection to switch protocols (WebSocket handshakes go through their own tunnel):
      // a 101 would make the rest of the stream unframed bytes.
      this.#fail("protocol", new Error(`${this.pool.address} switched protocols unasked`));
      return -1;
    }
    if (status < 200) {
      // Interim; the real head follows. A 100 is not passed on: abgate answers the client's Expect itself and does
      // not forward it, so a replica's 100 is for a question this client did not ask it.
      if (status !== 100 && this.#sink!.http10Client !== true && this.#sink!.onInterim !== undefined) {
        let interim = `HTTP/1.1 ${head.slice(9, statusEnd)}\r\n`;
        const lines = head.slice(statusEnd + 2, -2).split("\r\n");
        for (const line of lines) {
          const colon = line.indexOf(":");
          // (only well-formed fields: a name that is a token, then the colon)
          if (colon <= 0 || !onlyFrom(TCHAR, line, colon) || HOP_BY_HOP.has(line.slice(0, colon).toLowerCase())) continue;
          interim += `${line}\r\n`;
        }
        this.#sink!.onInterim(`${interim}\r\n`);
      }
      return usedOfBuf;
    }
    const http10 = head.charCodeAt(7) === 48; // "0"
    let keepAlive = !http10;
    let contentLength = -1;
    let chunked = false;
    /** a Transfer-Encoding line was seen: the body's length is not Content-Length's, chunked or not (RFC 9112 §6.3) */
    let transferCoded = false;
    /** the Transfer-Encoding lines' values, joined, and the first line's name as written */
    let transferCodings: string | undefined;
    let transferName: string | undefined;
    let listed: Set<string> | undefined;
    let closeSeen = false;
    let dated = false;
    // The lines passed on go as the replica wrote them: runs of them are slices of `head`, and only a line left out
    // (Connection, usually) ends a run. Splitting the head into lines, and each line into a name and a value to be
    // joined again, was about 40% of what the proxy allocated per request (a sampling heap profile under wrk).
    let fields = "";
    /** where the run of lines not yet added to `fields` starts */
    let runStart = statusEnd + 2;
    for (let lineStart = statusEnd + 2; lineStart < head.length; ) {
      const lineEnd = head.indexOf("\r\n", lineStart);
      const colon = head.indexOf(":", lineStart);
      // No colon, an obs-fold continuation line (leading whitespace), or whitespace before the colon: relaying
      // these would let the client read the fields differently from abgate (a "content-length : 5" abgate did not
      // see as one); RFC 9112 §5.1-5.2 allow a proxy to refuse the message with a 502, as HAProxy does.
      // A name is a token (RFC 9110 §5.1): one with a space, a control character or a separator ("Content-Ty pe",
      // "Content-Length\v") would reach the client as abgate did not read it; clients refuse it or, worse, guess.
      if (colon <= lineStart || colon > lineEnd || !onlyFrom(TCHAR, head, colon, lineStart)) {
        this.#fail("protocol", new Error(`${this.pool.address} sent a malformed header line`));
        return -1;
      }
      let passed = true;
      switch (fieldKind(head, lineStart, colon - lineStart)) {
        case Field.Other:
          break;
        case Field.Date:
          dated = true;
          break;
        case Field.ContentLength: {
          // RFC 9112 §6.3: 1*DIGIT; repeated identical values collapse to one, differing ones are an error.
          const value = trimOws(head.slice(colon + 1, lineEnd));
          const n = isDigits(value, 15) ? Number(value) : NaN;
          if (!Number.isSafeInteger(n) || (contentLength !== -1 && contentLength !== n)) {
            this.#fail("protocol", new Error(`${this.pool.address} sent an invalid content-length`));
            return -1;
          }
          passed = contentLength === -1;
          contentLength = n;
          break;
        }
        case Field.TransferEncoding: {
          // Several lines are one list (RFC 9110 §5.3), judged once the head is read.
          const value = trimOws(head.slice(colon + 1, lineEnd));
          transferCodings = transferCodings === undefined ? value : `${transferCodings}, ${value}`;
          transferName ??= head.slice(lineStart, colon);
          passed = false;
          break;
        }
        case Field.Connection: {
          const v = trimOws(head.slice(colon + 1, lineEnd)).toLowerCase();
          // close wins over keep-alive, whichever line comes last
          if (v.includes("close")) closeSeen = true;
          else if (v.includes("keep-alive")) keepAlive = true;
          const tokens = connectionTokens(v);
          if (tokens) {
            listed ??= new Set();
            for (const t of tokens) listed.add(t);
          }
          passed = false;
          break;
        }
        case Field.Dropped:
          passed = false;
          break;
      }
      if (!passed) {
        if (runStart < lineStart) fields += head.slice(runStart, lineStart);
        runStart = lineEnd + 2;
      }
      lineStart = lineEnd + 2;
    }
    if (runStart < head.length) fields += head.slice(runStart);
    if (transferCodings !== undefined) {
      // By token: "xchunked" is not chunked (it is close-delimited, RFC 9112 §6.3), and chunked anywhere but last, or
      // twice, is not a framing a recipient can trust (§6.1): 502, as nginx answers.
      const codings = transferCodings.split(",").map((c) => c.trim().toLowerCase()).filter((c) => c !== "");
      const chunkedAt = codings.indexOf("chunked");
      if (chunkedAt !== -1 && chunkedAt !== codings.length - 1) {
        this.#fail("protocol", new Error(`${this.pool.address} sent transfer-encoding "${transferCodings}": chunked must be the last coding, once`));
        return -1;
      }
      chunked = chunkedAt !== -1;
      transferCoded = true;
      // abgate undoes the chunking and re-frames the body itself; codings before it (gzip) still apply to the
      // bytes, so they are passed on, and the client's framing line completes them.
      const rest = chunked ? codings.slice(0, -1).join(", ") : transferCodings;
      if (rest !== "") {
        if (this.#sink!.http10Client !== true) fields += `${transferName!}: ${rest}\r\n`;
        else if (!this.#noBody && status !== 204 && status !== 304) {
          // An HTTP/1.0 client knows no Transfer-Encoding (RFC 9112 §6.1: a server MUST NOT send it one), so a gzip
          // coding would reach it as a body it takes for the resource itself. abgate does not decode codings; nginx
          // answers 502 to any coding but chunked, for every client. A bodiless answer just loses the header.
          this.#fail("protocol", new Error(`${this.pool.address} sent transfer-encoding "${transferCodings}", which an HTTP/1.0 client cannot read`), true);
          return -1;
        }
      }
    }
    if (closeSeen) keepAlive = false;
    if (status === 204 && contentLength !== -1) {
      // RFC 9110 §8.6: no Content-Length in a 204; a client could take it as the length of a body that never comes.
      (listed ??= new Set()).add("content-length");
    }
    if (transferCoded && contentLength !== -1) {
      // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); relaying both would misframe the body. Such a
      // message "ought to be handled as an error" (a smuggling attempt, or a replica out of step with itself): its
      // body is still read by Transfer-Encoding, but the connection is not used again.
      (listed ??= new Set()).add("content-length");
      contentLength = -1;
      keepAlive = false;
    }
    // Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
    if (listed) {
      fields = withoutFields(fields, listed);
      if (listed.has("date")) dated = false;
    }
    this.#keepAlive = keepAlive;
    const sink = this.#sink!;
    const statusText = head.slice(13, statusEnd);
    if (chunked) contentLength = -1;
    if (this.#noBody || status === 204 || status === 304) {
      sink.onHead(status, statusText, fields, contentLength === -1 ? 0 : contentLength, dated);
      if (usedOfBuf < buf.length) this.#keepAlive = false;
      if (this.#sink) this.#finish(true);
      return -1;
    }
    if (chunked) {
      this.#state = State.BodyChunked;
      this.#chunkState = Chunk.Size;
      this.#remaining = 0;
      this.#sizeDigits = 0;
    } else if (contentLength >= 0) {
      this.#state = State.BodyLength;
      this.#remaining = contentLength;
    } else {
      this.#state = State.BodyUntilClose;
      this.#keepAlive = false;
    }
    sink.onHead(status, statusText, fields, contentLength, dated);
    if (!this.#sink) return -1;
    if (this.#state === State.BodyLength && contentLength === 0) {
      if (usedOfBuf < buf.length) this.#keepAlive = false;
      this.#finish(true);
      return -1;
    }
    return usedOfBuf;
  }

  /** Chunked transfer coding (RFC 9112 §7.1): pass the payload on, drop the framing, find the end. */
  #parseChunked(buf: Buffer, offset: number): number {
    const sink = this.#sink!;
    let i = offset;
    while (i < buf.length) {
      switch (this.#chunkState) {
        case Chunk.Size: {
          const c = buf[i];
          const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
          if (d >= 0) {
            this.#sizeDigits++;
            this.#remaining = this.#remaining * 16 + d;
            if (this.#remaining > Number.MAX_SAFE_INTEGER / 16) return this.#chunkError("chunk size too large");
          } else if (this.#sizeDigits === 0) return this.#chunkError("chunk size line without a size");
          else if (c === 13) this.#chunkState = Chunk.SizeLf;
          else if (c === 59 /* ; */ || c === 32 || c === 9) this.#chunkState = Chunk.SizeExt;
          else return this.#chunkError("bad chunk size");
          i++;
          break;
        }
        case Chunk.SizeExt:
          if (buf[i] === 13) this.#chunkState = Chunk.SizeLf;
          i++;
          break;
        case Chunk.SizeLf:
          if (buf[i] !== 10) return this.#chunkError("bad chunk size line");
          i++;
          this.#chunkState = this.#remaining === 0 ? Chunk.TrailerLineStart : Chunk.Data;
          break;
        case Chunk.Data: {
          const n = Math.min(this.#remaining, buf.length - i);
          const ok = sink.onData(bodyPiece(buf, i, i + n));
          i += n;
          this.#remaining -= n;
          if (this.#remaining === 0) this.#chunkState = Chunk.DataCr;
          if (!ok) this.pause();
          if (!this.#sink) return -1;
          break;
        }
        case Chunk.DataCr:
          if (buf[i] !== 13) return this.#chunkError("missing CRLF after chunk");
          this.#chunkState = Chunk.DataLf;
          i++;
          break;
        case Chunk.DataLf:
          if (buf[i] !== 10) return this.#chunkError("missing CRLF after chunk");
          this.#chunkState = Chunk.Size;
          this.#sizeDigits = 0;
          i++;
          break;
        case Chunk.TrailerLineStart:
          // Trailers are dropped (Node re-frames the body for the client); an empty line ends the message. A lone LF
          // ends a trailer line (Chunk.Trailer), so it ends the empty one too (RFC 9112 §2.2, as nginx reads it): the
          // message ends there, rather than waiting for a line that never comes until the response timeout.
          if (buf[i] === 10) {
            i++;
            if (i < buf.length) this.#keepAlive = false;
            this.#finish(true);
            return -1;
          }
          if (buf[i] === 13) this.#chunkState = Chunk.TrailerLf;
          else this.#chunkState = Chunk.Trailer;
          i++;
          break;
        case Chunk.Trailer:
          if (buf[i] === 10) this.#chunkState = Chunk.TrailerLineStart;
          i++;
          break;
        case Chunk.TrailerLf:
          if (buf[i] !== 10) return this.#chunkError("bad trailer section");
          i++;
          if (i < buf.length) this.#keepAlive = false;
          this.#finish(true);
          return -1;
      }
    }
    return i;
  }

  #chunkError(what: string): number {
    this.#fail("protocol", new Error(`${this.pool.address} sent invalid chunked body: ${what}`));
    return -1;
  }
}

const READ_BUFFER_BYTES = 64 * 1024;
/** The one buffer every upstream socket reads into (see `onread` in the constructor). */
const READ_BUFFER = Buffer.allocUnsafe(READ_BUFFER_BYTES);

/**
 * Body pieces this big or bigger are copied out of READ_BUFFER into buffers that are used again once the client's
 * socket has written them (releaseBodyPiece), instead of into a new allocation each. A fresh 64 KiB buffer per read
 * is freed only by the next GC: streaming 1 GiB through at about 400 MB/s, they piled up between scavenges (60 ms
 * apart) to 30-35 MB, and abgate's RSS with them (bench/memory/upload.ts). Smaller pieces (a stream's events) come
 * from Node's own small-buffer pool, and a piece never given back is simply left to the GC.
 */
const POOLED_PIECE_BYTES = 16 * 1024;
/** Spare piece buffers kept: 4 MiB at most. */
const MAX_SPARE_PIECES = 64;
const sparePieces: ArrayBuffer[] = [];
/** Piece buffers handed out and not given back yet: a piece given back twice must not be lent twice. */
const lentPieces = new WeakSet<ArrayBuffer>();

/** A copy of buf[start, end) that outlives the next read: a body piece for `onData`. */
function bodyPiece(buf: Buffer, start: number, end: number): Buffer {
  const n = end - start;
  if (n < POOLED_PIECE_BYTES || n > READ_BUFFER_BYTES) return Buffer.from(buf.subarray(start, end));
  const backing = sparePieces.pop() ?? new ArrayBuffer(READ_BUFFER_BYTES);
  lentPieces.add(backing);
  const piece = Buffer.from(backing, 0, n);
  buf.copy(piece, 0, start, end);
  return piece;
}

/** Whether `piece` (from `onData`) should be given back to `releaseBodyPiece` once written. */
export function isPooledPiece(piece: Buffer): boolean {
  return lentPieces.has(piece.buffer as ArrayBuffer);
}

/**
 * Gives a piece from `onData` back for a later read, once nothing refers to its bytes any more: its write to the
 * client completed or failed. Any other buffer, or a piece given back already, is ignored.
 */
export function releaseBodyPiece(piece: Buffer): void {
  const backing = piece.buffer as ArrayBuffer;
  if (!lentPieces.has(backing)) return;
  lentPieces.delete(backing);
  if (sparePieces.length < MAX_SPARE_PIECES) sparePieces.push(backing);
}

/** Connections with an exchange in flight; the sweeper fails those past their deadline. */
const busy = new Set<UpstreamConnection>();
/** Date.now() as of the sweeper's last tick; read while it ticks, so that pooling a socket costs no clock call */
let tickMs = 0;

/** Now, to SWEEP_INTERVAL_MS, for the pool's idle ages: the sweeper's tick under load, the real clock otherwise. */
function idleClockMs(): number {
  return sweeper !== null ? tickMs : Date.now();
}
let sweeper: NodeJS.Timeout | null = null;
/** Timeouts are checked by one coarse timer instead of a socket timer per connection, which Node would re-arm
 * on every read and write; a timeout may fire up to this much late. */
export const SWEEP_INTERVAL_MS = 100;

function ensureSweeper(): void {
  if (sweeper) return;
  tickMs = Date.now();
  sweeper = setInterval(() => {
    if (busy.size === 0) {
      clearInterval(sweeper!);
      sweeper = null;
      return;
    }
    const now = (tickMs = Date.now());
    let late: UpstreamConnection[] | null = null;
    for (const c of busy) if (now > c.deadlineMs) (late ??= []).push(c);
    expireAfterReads(late, (c, after) => {
      if (busy.has(c) && after > c.deadlineMs) c.expire();
    });
  }, SWEEP_INTERVAL_MS);
  sweeper.unref();
}

/** Keep-alive sockets to one replica. Most recently used first, so that idle surplus sockets time out. */
export class UpstreamPool {
  readonly host: string;
  readonly port: number;
  readonly address: string;
  #idle: UpstreamConnection[] = [];
  #opts: UpstreamPoolOptions;
  #closed = false;
  #maxIdle: number;
  #maxIdleMs: number;

  constructor(host: string, port: number, opts: UpstreamPoolOptions) {
    this.host = host;
    this.port = port;
    this.address = `${host}:${port}`;
    this.#opts = opts;
    this.#maxIdle = opts.maxIdle ?? 512;
    this.#maxIdleMs = opts.maxIdleMs ?? 1000;
  }

  /** A pooled idle connection, or a new one (writes are buffered by the socket until it connects). */
  acquire(fresh = false): UpstreamConnection {
    if (!fresh) {
      const c = this.#idle.pop();
      if (c) {
        if (idleClockMs() - c.idleSinceMs <= this.#maxIdleMs) return c;
        // The most recently used socket is too old, so every one below it is: start afresh.
        c.destroy();
        this.dropIdle();
      }
    }
    return new UpstreamConnection(this, this.host, this.port, this.#opts);
  }

  release(conn: UpstreamConnection): void {
    if (this.#closed || this.#idle.length >= this.#maxIdle) return conn.destroy();
    conn.idleSinceMs = idleClockMs();
    this.#idle.push(conn);
  }

  forget(conn: UpstreamConnection): void {
    const i = this.#idle.lastIndexOf(conn);
    if (i !== -1) this.#idle.splice(i, 1);
  }

  /** Close every idle socket: one turned out stale (the replica restarted or died), so the others are too. */
  dropIdle(): void {
    for (const c of this.#idle.splice(0)) c.destroy();
  }

  get idleCount(): number {
    return this.#idle.length;
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.destroy();
  }
}
