import { pino, type Logger as PinoLogger } from "pino";

export type Logger = PinoLogger;
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/** JSON lines on stderr (stdout stays free for command output such as `report --json`). */
export function createLogger(level: LogLevel = "info", bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ fd: 2, sync: false }));
}

export const silentLogger: Logger = pino({ level: "silent" });
