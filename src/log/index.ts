import { pino, type Logger as PinoLogger } from "pino";

export type Logger = PinoLogger;
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/**
 * What the logger may hold in memory while stderr is not read as fast as it is written (a paused pipe, a slow
 * collector). Unbounded, a flood of lines under load grew the process by about 100 MB in 10 s; past this, lines are
 * dropped and counted (`abgate_log_lines_dropped_total`) instead, as HAProxy drops log lines its syslog cannot take.
 */
export const MAX_BUFFERED_LOG_BYTES = 8 * 2 ** 20;
/** how long after the first of a run of dropped lines the count of them is logged */
const DROP_NOTICE_DELAY_MS = 1000;

let droppedLines = 0;

/** Log lines dropped since the process started, because stderr's buffer was full. */
export function logLinesDropped(): number {
  return droppedLines;
}

/** JSON lines on stderr (stdout stays free for command output such as `report --json`). */
export function createLogger(level: LogLevel = "info", bindings: Record<string, unknown> = {}): Logger {
  const destination = pino.destination({ fd: 2, sync: false, maxLength: MAX_BUFFERED_LOG_BYTES });
  const logger = pino({ level, base: { ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
  /** dropped since the last notice that got through */
  let droppedSinceNotice = 0;
  /** the notice is being written: a drop now is the notice's own */
  let noticing = false;
  let noticeDropped = false;
  const notice = () => {
    noticing = true;
    noticeDropped = false;
    logger.warn({ dropped: droppedSinceNotice }, `${droppedSinceNotice} log lines dropped: stderr was not read as fast as abgate wrote to it`);
    noticing = false;
    // Still full: the count stands, and is tried again a second later (a paused pipe may stay paused a while).
    if (noticeDropped) setTimeout(notice, DROP_NOTICE_DELAY_MS).unref();
    else droppedSinceNotice = 0;
  };
  // (sonic-boom emits 'drop' inside write(), so within the logger call that wrote the line)
  destination.on("drop", () => {
    if (noticing) {
      noticeDropped = true;
      return;
    }
    droppedLines++;
    if (droppedSinceNotice++ === 0) setTimeout(notice, DROP_NOTICE_DELAY_MS).unref();
  });
  return logger;
}

export const silentLogger: Logger = pino({ level: "silent" });
