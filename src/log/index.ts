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
  let droppedSinceNotice = 0;
  destination.on("drop", () => {
    droppedLines++;
    if (droppedSinceNotice++ > 0) return;
    setTimeout(() => {
      const n = droppedSinceNotice;
      droppedSinceNotice = 0;
      // If this line is dropped too, the metric still counts them all.
      logger.warn({ dropped: n }, `${n} log lines dropped: stderr was not read as fast as abgate wrote to it`);
    }, DROP_NOTICE_DELAY_MS).unref();
  });
  return logger;
}

export const silentLogger: Logger = pino({ level: "silent" });
