import { type Clock, systemClock, type TimerHandle } from "../clock.ts";
import type { Logger } from "./index.ts";

export interface LogThrottleOptions {
  clock?: Clock;
  /** lines of one kind logged in full per window (default 10) */
  burst?: number;
  /** length of a window (default 1,000) */
  intervalMs?: number;
}

type Level = "error" | "warn" | "info";

interface Window {
  level: Level;
  startMs: number;
  logged: number;
  suppressed: number;
  /** the last suppressed line, which the summary repeats */
  fields: Record<string, unknown>;
  msg: string;
  timer: TimerHandle | null;
}

/**
 * Per-request log lines, bounded per kind. A variant whose replicas are all down fails every request sent its way:
 * at 10,000 requests a second, a line each is 10,000 identical lines a second, which bury the lines that say what
 * happened ("replica v0-0 is unhealthy") and cost the proxy CPU it needs most then. So, as the Linux kernel's
 * printk_ratelimit does (a burst per interval, then "N callbacks suppressed"), each kind of line (a key: the failure
 * and the variant, say) is logged in full `burst` times per window; the rest of the window's lines of that kind are
 * counted, and one summary line at the window's end says how many there were, with the last one's fields. Nothing
 * goes unsaid: every failure is a line or is counted in one, and every request is in the exposures and metrics.
 *
 * At level debug every line is logged: whoever asks for debug lines asked for all of them.
 */
export class LogThrottle {
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #burst: number;
  readonly #intervalMs: number;
  /** keys are few (failure codes × variants, admin statuses × codes), so windows are kept, not evicted */
  readonly #windows = new Map<string, Window>();
  /** flushed: the gateway is stopping, and a line held back now could be lost with the process */
  #flushed = false;

  constructor(log: Logger, options: LogThrottleOptions = {}) {
    this.#log = log;
    this.#clock = options.clock ?? systemClock;
    this.#burst = options.burst ?? 10;
    this.#intervalMs = options.intervalMs ?? 1000;
  }

  error(key: string, fields: Record<string, unknown>, msg: string): void {
    this.#line("error", key, fields, msg);
  }

  warn(key: string, fields: Record<string, unknown>, msg: string): void {
    this.#line("warn", key, fields, msg);
  }

  info(key: string, fields: Record<string, unknown>, msg: string): void {
    this.#line("info", key, fields, msg);
  }

  #line(level: Level, key: string, fields: Record<string, unknown>, msg: string): void {
    const log = this.#log;
    if (!log.isLevelEnabled(level)) return;
    if (this.#flushed || log.isLevelEnabled("debug")) {
      log[level](fields, msg);
      return;
    }
    const now = this.#clock.now();
    let w = this.#windows.get(key);
    if (w === undefined) {
      w = { level, startMs: now, logged: 0, suppressed: 0, fields, msg, timer: null };
      this.#windows.set(key, w);
    } else if (now - w.startMs >= this.#intervalMs) {
      // The summary's timer normally ran at the window's end; a clock that jumped gets it here instead.
      this.#summarize(w);
      w.startMs = now;
      w.logged = 0;
    }
    if (w.logged < this.#burst) {
      w.logged++;
      log[level](fields, msg);
      return;
    }
    w.level = level;
    w.suppressed++;
    w.fields = fields;
    w.msg = msg;
    w.timer ??= this.#clock.setTimeout(() => {
      w.timer = null;
      this.#summarize(w);
    }, w.startMs + this.#intervalMs - now);
  }

  #summarize(w: Window): void {
    w.timer?.cancel();
    w.timer = null;
    if (w.suppressed === 0) return;
    const n = w.suppressed;
    w.suppressed = 0;
    this.#log[w.level]({ ...w.fields, suppressed: n }, `${w.msg} (and ${n} more like it within ${this.#intervalMs / 1000} s, not logged one by one; the fields are the last one's)`);
  }

  /**
   * Logs the summaries still due, and every later line as it comes: the gateway calls this as it stops, and the
   * process may end before a window would.
   */
  flush(): void {
    this.#flushed = true;
    for (const w of this.#windows.values()) this.#summarize(w);
  }
}
