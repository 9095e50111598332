import { createRequire } from "node:module";
import { STATUS_CODES } from "node:http";
import { createServer, type Server, type Socket } from "node:net";
import { allowDeferredWrites, writeLatin1Soon } from "./direct-write.ts";
import { expireAfterReads } from "./deadlines.ts";

/**
 * The client half of the proxy: HTTP/1.1 connections parsed by Node's own parser (llhttp, through the same
 * `HTTPParser` binding `http.Server` uses), without `IncomingMessage`/`ServerResponse`.
 *
 * Why: with those two objects, Node's server costs about as much per request as the whole rest of the proxy (two
 * streams, header objects, an async resource, timers per socket). Here the parser consumes the socket natively
 * (reads go straight from libuv into llhttp, as in `http.Server`), hands us the raw header list, and responses
 * are written as one string plus the body. Everything HTTP-ish that `http.Server` did for us is done here:
 * keep-alive and `Connection: close`, HTTP/1.0 clients, pipelining in order, `Expect: 100-continue`, header size
 * (431, or 414 for a URL that alone passes it), parse errors (400), header/request/idle timeouts (408 or a silent
 * close), half-closed clients, upgrades.
 */

const require = createRequire(import.meta.url);
// `_http_common` is Node's own module (stable since Node 0.x); it exposes the parser http.Server is built on.
const { HTTPParser } = require("_http_common") as { HTTPParser: HTTPParserConstructor };

/**
 * Method names by llhttp's method number (llhttp's HTTP_METHOD_MAP and RTSP_METHOD_MAP; Node's own table is the
 * http_parser binding's `allMethods`, which process.binding only gives with a deprecation warning). Not
 * `_http_common.methods`: that list is shorter and ordered otherwise past index 33, so QUERY (46) was read as
 * missing and sent on as GET. client.test.ts checks this table against Node's.
 */
export const LLHTTP_METHODS: readonly string[] = [
  "DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND",
  "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE",
  "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "PRI",
  "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER", "REDIRECT", "RECORD",
  "FLUSH", "QUERY",
];

interface HTTPParserConstructor {
  new (): NodeHttpParser;
  REQUEST: number;
  kOnMessageBegin: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kOnExecute: number;
}

interface NodeHttpParser {
  [key: number]: unknown;
  initialize(type: number, resource: object, maxHeaderSize: number, lenientFlags: number): void;
  consume(handle: unknown): void;
  unconsume(): void;
  getCurrentBuffer(): Buffer;
  finish(): Error | undefined;
  free(): void;
  close(): void;
  conn: ClientConnection | null;
}

/** One parsed request head. `headers` is the raw [name, value, ...] list as the client sent it. */
export interface ClientRequest {
  method: string;
  url: string;
  headers: string[];
  /** 0 for an HTTP/1.0 client, 1 for HTTP/1.1 */
  httpMinor: number;
  /** llhttp's verdict from the version and the Connection header */
  keepAlive: boolean;
}

/** What a connection drives for one request; the proxy's Exchange implements it. */
export interface ClientExchange {
  readonly request: ClientRequest;
  /** Its turn has come (pipelined requests wait for the one before them to be answered). */
  start(): void;
  /** a piece of the request body (a copy, owned by the receiver) */
  onBody(chunk: Buffer): void;
  /** the request body is complete */
  onBodyEnd(): void;
  /** the connection closed before the exchange ended */
  onClientClose(): void;
  /** the client sent something invalid, or too slowly, after the head: answer `status` if the response has not begun */
  onClientFault(status: number, reason: string): void;
  /** Not started yet, and to be refused with `status` when it starts (llhttp refused its head or its body). */
  refuse(status: number, reason: string): void;
  /** the client's socket took everything written so far (after a write returned false) */
  onClientDrain(): void;
  /**
   * Start only once llhttp has judged the whole head, not from its head callback: it checks Transfer-Encoding after
   * that callback, and a request it then refuses must not have reached a replica ("chunked\t", whose tab Node trims
   * from the value the exchange sees).
   */
  readonly startAfterHead?: boolean;
}

export interface ClientHandlers {
  /**
   * A request head arrived. The exchange must not write before its `start()`: a pipelined request's answer waits
   * for the answers before it (refusals included, so they are answered in `start()` too).
   */
  request(conn: ClientConnection, req: ClientRequest): ClientExchange;
  /** An Upgrade request: the socket now belongs to the handler; `head` holds bytes that followed the request head. */
  upgrade(req: ClientRequest, socket: Socket, head: Buffer, remoteAddress: string): void;
  /** A connection-level client error (parse error, timeout), for the debug log. */
  clientError(code: string, message: string): void;
}

export interface ClientLimits {
  maxHeaderBytes: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
}

const kOnMessageBegin = HTTPParser.kOnMessageBegin;
const kOnHeaders = HTTPParser.kOnHeaders;
const kOnHeadersComplete = HTTPParser.kOnHeadersComplete;
const kOnBody = HTTPParser.kOnBody;
const kOnMessageComplete = HTTPParser.kOnMessageComplete;
const kOnExecute = HTTPParser.kOnExecute;

/**
 * Parsers of ended connections, kept for the next ones, as http.Server keeps its own (a FreeList of 1,000). A parser
 * is a C++ object that only `close()` deletes: dropping the JS object leaks it, about 2.5 KB per connection, which
 * a proxy whose clients do not keep connections alive piles up by the gigabyte. `max` and the counts are for tests.
 */
export const parserPool = {
  max: 1000,
  free: [] as NodeHttpParser[],
  created: 0,
  closed: 0,
};

function takeParser(): NodeHttpParser {
  const pooled = parserPool.free.pop();
  if (pooled !== undefined) return pooled;
  const parser = new HTTPParser();
  parser[kOnMessageBegin] = onMessageBegin;
  parser[kOnHeaders] = onHeaders;
  parser[kOnHeadersComplete] = onHeadersComplete;
  parser[kOnBody] = onBody;
  parser[kOnMessageComplete] = onMessageComplete;
  parser[kOnExecute] = onExecute;
  parserPool.created++;
  return parser;
}

/** `parser` no longer consumes any socket and has no connection. */
function giveBackParser(parser: NodeHttpParser): void {
  if (parserPool.free.length < parserPool.max) {
    // What the destructor would do: the destroy async hook (initialize() starts a new async resource).
    parser.free();
    parserPool.free.push(parser);
  } else {
    // Later, as http.Server does: this may run inside one of the parser's own callbacks, and close() deletes it.
    setImmediate(closeParser, parser);
  }
}

function closeParser(parser: NodeHttpParser): void {
  parser.close();
  parserPool.closed++;
}

const enum Deadline {
  None,
  /** between requests on a keep-alive connection: close silently */
  Idle,
  /** the request head has begun but not ended: 408 */
  Headers,
  /** the head is in, the body is not: 408 */
  Body,
}

/** Bodies up to this size are written together with the head as one latin1 string (bytes map 1:1). */
const SMALL_BODY_BYTES = 2048;

const OWNER = Symbol("abgate.clientConnection");

/**
 * Answers waiting to be sent (to a client that does not read) above which no further pipelined requests are read:
 * 1 MiB, beyond a large answer's tail in a normally reading client's socket (the kernel takes a few MB on loopback).
 */
const MAX_ANSWER_BACKLOG_BYTES = 1 << 20;
/** How often a connection waiting for its answers to leave checks again. */
const BACKLOG_CHECK_MS = 10;
type OwnedSocket = Socket & { [OWNER]?: ClientConnection; _handle?: { readStart(): number; readStop(): number; reading?: boolean } | null };

/**
 * The method of the request line around `at` in `buffer` when that line is a well-formed request line whose method
 * llhttp does not know (`FOO / HTTP/1.1`); undefined for anything else (TLS bytes, garbage), which stays a 400.
 * llhttp refuses the method at its first byte, so the rest of the line may not have been read yet (a client that
 * writes the line in pieces): a line cut short by the buffer's end counts when what there is of it is the start of
 * a well-formed one, method and space at least (`FOO /pa`), as the parser cannot be asked to wait for the rest.
 */
export function unknownMethod(buffer: Buffer | undefined, at: number): string | undefined {
  if (buffer === undefined) return undefined;
  const start = buffer.lastIndexOf(0x0a, Math.min(at, buffer.length - 1)) + 1;
  const end = buffer.indexOf(0x0a, start);
  const line = buffer.toString("latin1", start, Math.min(end === -1 ? buffer.length : end, start + 8192));
  const whole = end === -1 ? PARTIAL_REQUEST_LINE : REQUEST_LINE;
  return whole.exec(line)?.[1];
}

const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) [^ \r\n]+ HTTP\/1\.[01]\r?$/;
/** The start of a request line: method and space, then as much of the target and the version as there is. */
const PARTIAL_REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (?:[^ \r\n]+(?: (?:H(?:T(?:T(?:P(?:\/(?:1(?:\.(?:[01]\r?)?)?)?)?)?)?)?)?)?)?$/;

let dateSecond = -1;
let dateText = "";
/**
 * The Date field's value now (RFC 9110 §6.6.1, IMF-fixdate), made at most once a second. abgate's own answers carry
 * one, and so does a replica's answer that has none: a proxy with a clock MUST add it.
 */
export function httpDate(nowMs = Date.now()): string {
  const second = Math.floor(nowMs / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(second * 1000).toUTCString();
  }
  return dateText;
}

/** Reason phrases for the statuses abgate writes itself. */
export function reasonPhrase(status: number): string {
  return STATUS_CODES[status] ?? "Unknown";
}

/**
 * One client connection. Parser callbacks are shared functions (their `this` is the parser, which points back
 * here), so a connection costs one object, one parser and one socket: 5,000 idle keep-alive clients stay cheap.
 */
export class ClientConnection {
  readonly socket: OwnedSocket;
  readonly server: ClientServer;
  readonly remoteAddress: string;
  /** whether the peer is in forwardedHeaders.trustedIPs: asked once per connection (undefined until asked) */
  trustedPeer: boolean | undefined = undefined;
  #parser: NodeHttpParser | null;
  /** the exchange whose response is being written (the head of the pipeline) */
  current: ClientExchange | null = null;
  /** pipelined exchanges that wait for `current` to be answered */
  #queue: ClientExchange[] = [];
  /** responseDone is starting queued exchanges (see there) */
  #startingNext = false;
  /** the exchange the loop in responseDone just started was answered before its start returned */
  #answeredAtOnce = false;
  /** the check of #resumeOnceSent, while one waits */
  #backlogTimer: NodeJS.Timeout | null = null;
  /** the exchange whose request body the parser is reading now */
  #reading: ClientExchange | null = null;
  /** keep-alive verdict of the request being answered; false closes the connection after its response */
  keepAlive = true;
  httpMinor = 1;
  /** a response head has been written for `current` */
  responseStarted = false;
  /** the connection ends after the current response (Connection: close, a fatal client error, a drain) */
  closing = false;
  #readPaused = false;
  /** the client half-closed its side */
  #ended = false;
  /** an exchange whose head llhttp has not finished judging (see ClientExchange.startAfterHead) */
  #startAfterHead: ClientExchange | null = null;
  /** an Upgrade request whose head was just parsed; handed over once the parser returns (`execute`) */
  #upgrade: ClientRequest | null = null;
  /** an Upgrade request that came behind requests still being answered, and the bytes read after its head */
  #upgradeAfter: { req: ClientRequest; head: Buffer } | null = null;
  /** the request being read offered an Upgrade abgate does not tunnel (not websocket): proxied as plain HTTP */
  #plainUpgrade = false;
  #headerParts: string[] | null = null;
  #urlParts = "";
  /** reads the parser has finished (one execute() each), and the one in which the message whose head is being read
   * began (-1 once its head is complete) */
  #reads = 0;
  #messageRead = -1;
  /** the head being read has had no line end in the reads before this one: its URL is still going (see #parseError) */
  #lineOpen = false;
  deadline = Deadline.None;
  deadlineMs = 0;
  #requestDeadlineMs = 0;
  /**
   * While a response waits for the client to read it (its socket's buffer is full, so the replica is paused): when
   * that wait ends the connection; 0 when not waiting. Every drain clears it, so a slow reader that keeps reading is
   * served; like nginx's send_timeout and HAProxy's timeout client, it bounds the client's idle time, here
   * idleTimeoutMs. Without it a client that stops reading would hold the exchange and its replica connection forever.
   */
  #sendDeadlineMs = 0;

  constructor(server: ClientServer, socket: OwnedSocket) {
    this.server = server;
    this.socket = socket;
    this.remoteAddress = socket.remoteAddress ?? "";
    socket[OWNER] = this;
    allowDeferredWrites(socket);
    const parser = takeParser();
    parser.initialize(HTTPParser.REQUEST, this, server.limits.maxHeaderBytes, 0);
    parser.conn = this;
    this.#parser = parser;
    // Reads go from libuv straight into llhttp (no 'data' events), exactly as http.Server does it.
    parser.consume(socket._handle);
    socket.on("error", noop); // 'close' follows; the exchanges learn of it there
    socket.on("close", onSocketClose);
    socket.on("end", onSocketEnd);
    socket.on("drain", onSocketDrain);
    // Flowing, so that EOF and errors surface as 'end' and 'close' (no data reaches the stream itself: the
    // parser has it).
    socket.resume();
    // A new connection gets the header timeout to start its request, as nginx's client_header_timeout and HAProxy's
    // timeout http-request do: the idle timeout (longer) is for waiting between requests of a kept-alive connection,
    // and would let a client hold connections that never say anything. Still an Idle deadline: nothing to answer
    // when it passes, and a drain closes such a connection at once.
    this.setDeadline(Deadline.Idle, Math.min(server.limits.idleTimeoutMs, server.limits.headersTimeoutMs));
  }

  setDeadline(kind: Deadline, inMs: number): void {
    this.deadline = kind;
    this.deadlineMs = kind === Deadline.None ? 0 : Date.now() + inMs;
  }

  /** Stop reading from the client (request body backpressure, or pipelined requests waiting their turn). */
  pauseReading(): void {
    if (this.#readPaused) return;
    this.#readPaused = true;
    const h = this.socket._handle;
    if (h && h.reading !== false) {
      h.reading = false;
      h.readStop();
    }
  }

  resumeReading(): void {
    // (after an upgrade's head the parser reads nothing more: the bytes after it are the new protocol's)
    if (!this.#readPaused || this.#queue.length > 0 || this.#upgradeAfter !== null) return;
    this.#readPaused = false;
    const h = this.socket._handle;
    if (h && !h.reading && !this.socket.destroyed) {
      h.reading = true;
      h.readStart();
    }
  }

  /**
   * Write a whole response head and, optionally, a body piece in one system call. `bodyIsView`: `body` may be
   * overwritten once this returns (see UpstreamSink.onEnd), so a body that has to be kept is copied. `written` is
   * called once the socket no longer needs `body`'s bytes.
   */
  writeHead(head: string, body?: Buffer, bodyIsView = false, written?: () => void): boolean {
    this.responseStarted = true;
    const s = this.socket;
    if (body === undefined || body.length === 0) {
      written?.();
      return writeLatin1Soon(s, head);
    }
    // A small body joins the head in one string: one plain write instead of cork/writev and its bookkeeping.
    if (body.length <= SMALL_BODY_BYTES) {
      const ok = writeLatin1Soon(s, head + body.toString("latin1"));
      written?.();
      return ok;
    }
    s.cork();
    s.write(head, "latin1");
    const ok = s.write(bodyIsView ? Buffer.from(body) : body, written);
    s.uncork();
    return ok;
  }

  /** A write to the client did not fit its socket's buffer: the response now waits for the client to read. */
  sendBlocked(): void {
    if (this.#sendDeadlineMs === 0) this.#sendDeadlineMs = Date.now() + this.server.limits.idleTimeoutMs;
  }

  /** `written` is called once the socket no longer needs `chunk`'s bytes (written, or the socket failed). */
  write(chunk: Buffer | string, written?: () => void): boolean {
    return typeof chunk === "string" ? this.socket.write(chunk, "latin1", written) : this.socket.write(chunk, written);
  }

  /** A short answer written by the connection itself (error or refusal), ending the connection if `close`. */
  respondNow(status: number, headers: string, body: string, close: boolean): void {
    if (close) this.closing = true;
    const keep = !this.closing && this.keepAlive;
    const head =
      `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\ndate: ${httpDate()}\r\n${headers}content-length: ${Buffer.byteLength(body)}\r\n` +
      (keep ? (this.httpMinor === 0 ? "connection: keep-alive\r\n\r\n" : "\r\n") : "connection: close\r\n\r\n");
    this.responseStarted = true;
    // RFC 9110 §9.3.2: no content in an answer to HEAD (its Content-Length says what a GET would get); the client
    // would read the body as the start of the next answer.
    this.socket.write(this.current?.request.method === "HEAD" ? head : head + body, "utf8");
  }

  /** `ex` is answered: end the connection, or start the next pipelined exchange, or wait for the next request. */
  responseDone(ex: ClientExchange): void {
    if (this.current !== ex) return;
    this.current = null;
    this.responseStarted = false;
    // Started by the loop below and answered at once (a 503, a refusal): the loop goes on with the next one. Each
    // starting the next from here instead, 1,600 pipelined requests answered at once overflowed the stack, and the
    // rest of the connection's requests were never answered.
    if (this.#startingNext) {
      this.#answeredAtOnce = true;
      return;
    }
    this.#startingNext = true;
    try {
      for (;;) {
        if (this.closing || !this.keepAlive || this.server.draining || this.#ended) {
          this.closing = true;
          this.#queue.length = 0;
          this.#upgradeAfter = null;
          // destroySoon, not end: unread request bytes would otherwise keep a half-closed socket open; nothing more
          // will be answered. (It ends our side first and destroys once the answer is flushed.)
          this.socket.destroySoon();
          return;
        }
        const next = this.#queue.shift();
        if (next === undefined) break;
        this.#answeredAtOnce = false;
        this.#begin(next);
        if (!this.#answeredAtOnce) break;
      }
      // (an upgrade waits for every answer before it: none in flight)
      if (this.current === null && this.#upgradeAfter !== null) {
        const { req, head } = this.#upgradeAfter;
        this.#upgradeAfter = null;
        return this.#upgradeNow(req, head);
      }
    } finally {
      this.#startingNext = false;
    }
    // Resume: the next request may come, or the rest of an answered request's body is to be read and dropped. Not
    // while the answers so far wait to be sent: a client that pipelines requests and never reads made abgate keep
    // its answers without bound (190 MB in 4.5 s), as Node's http.Server would not.
    if (this.#answerBacklog() > MAX_ANSWER_BACKLOG_BYTES) this.#resumeOnceSent();
    else this.resumeReading();
    if (this.current === null && this.#reading === null) this.setDeadline(Deadline.Idle, this.server.limits.idleTimeoutMs);
  }

  /** Bytes of answers written and not yet taken by the kernel: the stream's and those of direct writes (libuv's). */
  #answerBacklog(): number {
    return this.socket.writableLength + ((this.socket._handle as { writeQueueSize?: number } | null)?.writeQueueSize ?? 0);
  }

  /**
   * Reads on once the answers' backlog is sent, checked every few ms (direct writes emit no 'drain'); meanwhile the
   * send deadline runs, so that a client that never reads is cut after idleTimeoutMs.
   */
  #resumeOnceSent(): void {
    this.pauseReading();
    this.sendBlocked();
    if (this.#backlogTimer !== null) return;
    const check = () => {
      this.#backlogTimer = null;
      if (this.socket.destroyed) return;
      if (this.#answerBacklog() > MAX_ANSWER_BACKLOG_BYTES) {
        this.#backlogTimer = setTimeout(check, BACKLOG_CHECK_MS);
        return;
      }
      if (this.current === null) this.#sendDeadlineMs = 0;
      this.resumeReading();
    };
    this.#backlogTimer = setTimeout(check, BACKLOG_CHECK_MS);
  }

  /** Cut the connection now (drain timeout, shutdown). */
  destroy(): void {
    this.socket.destroy();
  }

  /** Cut the connection with a TCP reset: an answer broken off mid-body, which a FIN would end as if whole. */
  reset(): void {
    if (this.socket.destroyed) return;
    this.socket.resetAndDestroy();
  }

  get idle(): boolean {
    return this.current === null && this.#reading === null && this.deadline === Deadline.Idle;
  }

  // --- parser events (called through the shared functions below) ---

  messageBegin(): void {
    this.#messageRead = this.#reads;
    const limits = this.server.limits;
    this.setDeadline(Deadline.Headers, limits.headersTimeoutMs);
    this.#requestDeadlineMs = Date.now() + limits.requestTimeoutMs;
  }

  headersPart(headers: string[], url: string): void {
    (this.#headerParts ??= []).push(...headers);
    this.#urlParts += url;
  }

  headersComplete(major: number, minor: number, headers: string[] | undefined, method: number, url: string | undefined, upgrade: boolean, keepAlive: boolean): number {
    this.#messageRead = -1;
    this.#lineOpen = false;
    if (this.closing) return 0;
    if (this.#headerParts) {
      headers = headers ? this.#headerParts.concat(headers) : this.#headerParts;
      this.#headerParts = null;
    }
    if (this.#urlParts) {
      url = this.#urlParts + (url ?? "");
      this.#urlParts = "";
    }
    if (major !== 1) {
      // llhttp reads any digit as a version: "GET / HTTP/2.0" (h2 spoken as text, or a typo) was served as 1.0.
      // RFC 9110 §15.6.6: a server refuses a major version it does not support with 505.
      this.pauseReading();
      this.#fault(505, `HTTP/${major}.${minor} is not supported`);
      return 0;
    }
    const name = LLHTTP_METHODS[method];
    if (name === undefined) {
      // A method this table does not know (a newer llhttp's): refused, never forwarded as another one.
      this.pauseReading();
      this.#fault(501, `method number ${method} is not supported`);
      return 0;
    }
    const req: ClientRequest = { method: name, url: url ?? "/", headers: headers ?? [], httpMinor: minor, keepAlive };
    this.deadline = Deadline.Body;
    this.deadlineMs = this.#requestDeadlineMs;
    if (upgrade) {
      if (req.method === "CONNECT" || isWebSocketUpgrade(req.headers)) {
        this.#upgrade = req;
        return 0;
      }
      // Another protocol (h2c, which curl --http2 and Java's HttpClient offer on http:// URLs): answered over HTTP/1.1
      // as a plain request, as nginx and Node's http.Server do (Upgrade is hop-by-hop, not forwarded). llhttp still
      // stops after this message, expecting the other protocol; see execute().
      this.#plainUpgrade = true;
    }
    const ex = this.server.handlers.request(this, req);
    this.#reading = ex;
    if (this.current !== null || this.#startAfterHead !== null) {
      // Pipelined: its answer waits for the one before it. Stop reading meanwhile, so that at most one read's
      // worth of requests waits.
      this.#queue.push(ex);
      this.pauseReading();
      return 0;
    }
    if (ex.startAfterHead === true) {
      this.#startAfterHead = ex;
      return 0;
    }
    this.#begin(ex);
    return 0;
  }

  #begin(ex: ClientExchange): void {
    this.current = ex;
    this.keepAlive = ex.request.keepAlive;
    this.httpMinor = ex.request.httpMinor;
    ex.start();
  }

  body(chunk: Buffer): void {
    this.#reading?.onBody(chunk);
  }

  messageComplete(): void {
    // Trailer fields of a chunked body reach headersPart just before this: they belong to no next request (which
    // would start with them) and are not forwarded (RFC 9110 §6.5.1 lets a recipient discard them).
    this.#headerParts = null;
    this.#urlParts = "";
    const ex = this.#reading;
    this.#reading = null;
    if (this.deadline === Deadline.Body || this.deadline === Deadline.Headers) this.setDeadline(Deadline.None, 0);
    if (ex) ex.onBodyEnd();
    if (this.current === null && !this.closing) {
      // Answered inline (a refusal): wait for the next request.
      this.setDeadline(Deadline.Idle, this.server.limits.idleTimeoutMs);
    }
  }

  execute(ret: number | Error): void {
    this.#reads++;
    const waiting = this.#startAfterHead;
    this.#startAfterHead = null;
    if (ret instanceof Error) return this.#parseError(ret as Error & { code?: string }, waiting);
    // A head goes on into the next read (rare: most come whole): carry whether its request line is still open.
    if (this.#messageRead !== -1) this.#lineOpen = this.#urlOnlySoFar();
    if (waiting !== null) this.#begin(waiting);
    if (this.#plainUpgrade) {
      // The parser goes on with the next read, but bytes after the upgrade-offering request in this read were not
      // parsed: end the connection after its answer, so that a pipelining client sends them again.
      const left = (this.#parser?.getCurrentBuffer().length ?? ret) - ret;
      if (left > 0) {
        this.#plainUpgrade = false;
        this.closing = true;
        this.pauseReading();
      } else if (this.#reading === null) this.#plainUpgrade = false;
      return;
    }
    const req = this.#upgrade;
    if (req === null) return;
    this.#upgrade = null;
    const head = Buffer.from(this.#parser!.getCurrentBuffer().subarray(ret));
    if (this.current !== null || this.#queue.length > 0) {
      // Behind pipelined requests still being answered: its turn comes after theirs (RFC 9112 §9.3.2), as in nginx.
      // Cutting the connection here lost an answer under way, of a request that may have changed something. The
      // parser stopped at this head; reading waits for the handover (responseDone).
      this.#upgradeAfter = { req, head };
      this.deadline = Deadline.None;
      this.pauseReading();
      return;
    }
    this.#upgradeNow(req, head);
  }

  /** Hand the connection over for an upgrade (or refuse a CONNECT); `head` has the bytes read after its head. */
  #upgradeNow(req: ClientRequest, head: Buffer): void {
    if (req.method === "CONNECT") {
      // abgate is not a forward proxy.
      this.closing = true;
      this.respondNow(405, "", "", true);
      this.socket.destroySoon();
      return;
    }
    this.#release();
    const socket = this.socket;
    socket.removeListener("close", onSocketClose);
    socket.removeListener("end", onSocketEnd);
    socket.removeListener("drain", onSocketDrain);
    this.server.forget(this);
    this.deadline = Deadline.None;
    // The parser no longer consumes the handle: the socket reads as a normal stream again, once someone listens.
    (socket as { readableFlowing: boolean | null }).readableFlowing = null;
    this.server.handlers.upgrade(req, socket, head, this.remoteAddress);
  }

  /**
   * Whether the head being read has had no line end yet, up to byte `end` of this read (the one execute() just
   * counted; by default its end): none in this read before `end`, and none in the earlier reads of its message. A message that began in
   * this read behind another one sees that one's line ends: taken as ended, so such a URL gets 431, never a wrong 414.
   * Empty lines at the start of the read, which llhttp skips before a request line (RFC 9112 §2.2), end no line of
   * a message that began in it: its first byte comes after them.
   */
  #urlOnlySoFar(end?: number): boolean {
    const beganHere = this.#messageRead === this.#reads - 1;
    if (!beganHere && !this.#lineOpen) return false;
    const read = this.#parser!.getCurrentBuffer();
    end ??= read.length;
    let from = 0;
    if (beganHere) while (from < end && (read[from] === 10 || read[from] === 13)) from++;
    return !read.subarray(from, end).includes(10);
  }

  /**
   * llhttp refused the bytes of this read. `waiting` is a request whose head came in it and that has not started
   * (see ClientExchange.startAfterHead).
   */
  #parseError(err: Error & { code?: string }, waiting: ClientExchange | null): void {
    const code = err.code ?? "HPE_UNKNOWN";
    this.server.handlers.clientError(code, err.message);
    const [status, reason] = this.#parseErrorAnswer(err, code);
    if (waiting !== null) {
      if (this.#reading === waiting) {
        // It is the request llhttp refused (its head, judged after the head callback, or its body in the same read):
        // refused before it starts, as a refusal of its head is, with its request id; never assigned, nothing sent
        // to a replica. (It used to get a bare 400, as for bytes that were no request.)
        this.#reading = null;
        this.closing = true;
        this.#queue.length = 0;
        this.deadline = Deadline.None;
        waiting.refuse(status, reason);
        return this.#begin(waiting);
      }
      // Whole before the bytes llhttp refused: answered first, then the connection ends (#fault). It was dropped
      // with a bare 400 before.
      this.#begin(waiting);
    }
    this.#fault(status, reason);
  }

  #parseErrorAnswer(err: Error & { bytesParsed?: number }, code: string): [status: number, reason: string] {
    const at = err.bytesParsed ?? 0;
    if (code === "HPE_INVALID_METHOD") {
      const method = unknownMethod(this.#parser?.getCurrentBuffer(), at);
      // RFC 9110 §9.1: a method the server does not implement is a 501; not a 400, which says the request is malformed.
      if (method !== undefined) return [501, `method ${method.slice(0, 40)} is not supported`];
    }
    if (code === "HPE_HEADER_OVERFLOW") {
      // Node counts the URL toward the header limit (with header names and values), so a long URL overflows it too.
      // RFC 9110 §15.5.15 has 414 for that, and a client that gets 431 looks for a big cookie. Said only when sure:
      // no line of the head ended before the overflow, so the URL alone reached the limit. (#lineOpen is false
      // outside a head, as in a chunked body's trailers.)
      const urlOnly = this.#parser !== null && this.#urlOnlySoFar(at);
      return urlOnly ? [414, "URL too long"] : [431, err.message];
    }
    return [400, err.message];
  }

  /** A fatal client error or timeout: answer `status` if nothing is being answered yet, then end the connection. */
  #fault(status: number, reason: string): void {
    this.closing = true;
    this.#queue.length = 0;
    const reading = this.#reading;
    this.#reading = null;
    if (reading !== null && reading === this.current) {
      // The exchange answers (and records) it, then ends the connection through responseDone.
      reading.onClientFault(status, reason);
      return;
    }
    if (this.current !== null) {
      // The response of an earlier request is under way; that one finishes, then the connection ends.
      this.pauseReading();
      return;
    }
    // Already ending (a refusal on the head, which llhttp may find again right after): that answer goes out first;
    // unless this is a timeout, when a client that stopped reading would keep the ending from ever finishing.
    if (!this.socket.writable) {
      if (status === 408) this.socket.destroy();
      return;
    }
    if (this.responseStarted) return void this.socket.destroy();
    this.respondNow(status, "", "", true);
    this.socket.destroySoon();
  }

  /** Whether a deadline of this connection has passed at `now` (expire then acts on it). */
  pastDeadline(now: number): boolean {
    return (this.#sendDeadlineMs !== 0 && now >= this.#sendDeadlineMs) || (this.deadline !== Deadline.None && now >= this.deadlineMs);
  }

  expire(now: number): void {
    if (this.#sendDeadlineMs !== 0 && now >= this.#sendDeadlineMs) {
      // Nothing can be answered mid-response: cut the connection; the exchange is abandoned (and recorded as 499).
      this.#sendDeadlineMs = 0;
      this.server.handlers.clientError("ERR_SEND_TIMEOUT", "the client stopped reading its response");
      return void this.socket.destroy();
    }
    if (this.deadline === Deadline.None || now < this.deadlineMs) return;
    const kind = this.deadline;
    this.deadline = Deadline.None;
    if (kind === Deadline.Idle) return void this.socket.destroy();
    this.server.handlers.clientError("ERR_HTTP_REQUEST_TIMEOUT", kind === Deadline.Headers ? "request headers took too long" : "request body took too long");
    this.#fault(408, "request timeout");
  }

  onEnd(): void {
    this.#ended = true;
    const err = this.#parser?.finish();
    if (err instanceof Error || this.current !== null || this.#reading !== null) {
      // The client stopped sending mid-request, or while waiting for its answer: like http.Server (without
      // httpAllowHalfOpen) and nginx, take it as gone and abandon the exchange.
      return void this.socket.destroy();
    }
    this.socket.destroySoon();
  }

  onClose(): void {
    this.server.forget(this);
    if (this.#backlogTimer !== null) clearTimeout(this.#backlogTimer);
    this.#backlogTimer = null;
    // Queued pipelined exchanges never started (nothing was sent or recorded for them): they just go.
    const ex = this.current;
    this.current = null;
    this.#queue = [];
    this.#reading = null;
    this.#upgradeAfter = null;
    ex?.onClientClose();
    this.#release();
  }

  onDrain(): void {
    this.#sendDeadlineMs = 0;
    this.current?.onClientDrain();
  }

  #release(): void {
    const parser = this.#parser;
    if (!parser) return;
    this.#parser = null;
    parser.conn = null;
    try {
      parser.unconsume();
    } catch {
      // already unconsumed (the handle closed)
    }
    giveBackParser(parser);
  }
}

function noop(): void {}

function onMessageBegin(this: NodeHttpParser): number {
  this.conn?.messageBegin();
  return 0;
}
function onHeaders(this: NodeHttpParser, headers: string[], url: string): void {
  this.conn?.headersPart(headers, url);
}
function onHeadersComplete(
  this: NodeHttpParser,
  major: number,
  minor: number,
  headers: string[] | undefined,
  method: number,
  url: string | undefined,
  _statusCode: unknown,
  _statusMessage: unknown,
  upgrade: boolean,
  keepAlive: boolean,
): number {
  return this.conn ? this.conn.headersComplete(major, minor, headers, method, url, upgrade, keepAlive) : 0;
}
function onBody(this: NodeHttpParser, chunk: Buffer): void {
  this.conn?.body(chunk);
}
function onMessageComplete(this: NodeHttpParser): void {
  this.conn?.messageComplete();
}
function onExecute(this: NodeHttpParser, ret: number | Error): void {
  this.conn?.execute(ret);
}
function onSocketClose(this: OwnedSocket): void {
  this[OWNER]?.onClose();
}
function onSocketEnd(this: OwnedSocket): void {
  this[OWNER]?.onEnd();
}
function onSocketDrain(this: OwnedSocket): void {
  this[OWNER]?.onDrain();
}

/** The listening side: accepts connections, runs one coarse timer for every connection's deadline. */
export class ClientServer {
  readonly server: Server;
  readonly limits: ClientLimits;
  readonly handlers: ClientHandlers;
  readonly #connections = new Set<ClientConnection>();
  #sweeper: NodeJS.Timeout | null = null;
  draining = false;

  constructor(limits: ClientLimits, handlers: ClientHandlers) {
    this.limits = limits;
    this.handlers = handlers;
    // allowHalfOpen: the connection itself decides what a client's half-close means (onEnd): between requests, the
    // end once any answer is written; mid-request or while waiting for its answer, a client gone, as nginx and
    // http.Server take it.
    this.server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#accept(socket));
    this.server.on("listening", () => this.#startSweeper());
    this.server.on("close", () => this.#stopSweeper());
  }

  #accept(socket: Socket): void {
    if (this.draining) return void socket.destroy();
    const conn = new ClientConnection(this, socket as OwnedSocket);
    this.#connections.add(conn);
  }

  forget(conn: ClientConnection): void {
    this.#connections.delete(conn);
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /**
   * Timeouts are checked by one timer for all connections rather than a timer per socket (which Node re-arms on
   * every read and write). It ticks at a quarter of the shortest timeout, at most once a second, so a timeout fires
   * at most that much late.
   */
  #startSweeper(): void {
    if (this.#sweeper) return;
    const { headersTimeoutMs, requestTimeoutMs, idleTimeoutMs } = this.limits;
    const tickMs = Math.max(10, Math.min(1000, Math.floor(Math.min(headersTimeoutMs, requestTimeoutMs, idleTimeoutMs) / 4)));
    this.#sweeper = setInterval(() => {
      const now = Date.now();
      let late: ClientConnection[] | null = null;
      for (const c of this.#connections) if (c.pastDeadline(now)) (late ??= []).push(c);
      // expire() itself checks the deadlines again, at the time it is given
      expireAfterReads(late, (c, after) => {
        if (this.#connections.has(c)) c.expire(after);
      });
    }, tickMs);
    this.#sweeper.unref();
  }

  #stopSweeper(): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    this.#sweeper = null;
  }

  /** Stop accepting; idle connections close now, busy ones after their current response. */
  close(): void {
    this.draining = true;
    this.server.close();
    this.closeIdleConnections();
  }

  closeIdleConnections(): void {
    for (const c of this.#connections) if (c.idle) c.destroy();
  }

  /** Cut every connection (the drain deadline): idle ones with a FIN, busy ones with a reset (an answer cut off). */
  closeAllConnections(): void {
    for (const c of this.#connections) {
      if (c.idle) c.destroy();
      else c.reset();
    }
    this.#stopSweeper();
  }
}

/** Whether an upgrade request asks for WebSocket, the one protocol abgate tunnels (RFC 6455 §4.1: Upgrade: websocket). */
function isWebSocketUpgrade(headers: string[]): boolean {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i].toLowerCase() === "upgrade" && /(^|,)\s*websocket\s*(,|$)/i.test(headers[i + 1])) return true;
  }
  return false;
}
