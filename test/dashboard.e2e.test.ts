/**
 * The dashboard in Debian's Chromium (playwright-core, never `playwright install`), against a running abgate:
 * static engine over two real HTTP backends, a SQLite store in a temp dir, simulated users sending requests
 * through the proxy and outcomes to POST /v1/events. Saves test-results/dashboard.png (docs/dashboard.png, the
 * README's picture, with ABGATE_UPDATE_SCREENSHOT=1, so that a test run leaves the checkout clean).
 *
 *   node --import tsx --test test/dashboard.e2e.test.ts
 *
 * Without /usr/bin/chromium the tests skip with a message, unless ABGATE_REQUIRE_BROWSER=1, when they fail.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { seededRandom } from "../src/clock.ts";
import { validateConfig } from "../src/config/index.ts";
import { startGateway, type Gateway } from "../src/gateway.ts";
import { silentLogger } from "../src/log/index.ts";
import { startBackend, type Backend } from "./helpers/backends.ts";

/** Debian's Chromium; ABGATE_CHROMIUM points elsewhere (e.g. to check the skip path). */
const CHROMIUM = process.env.ABGATE_CHROMIUM ?? "/usr/bin/chromium";
const TOKEN = "dashboard-e2e-token";
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const haveBrowser = existsSync(CHROMIUM);
if (!haveBrowser && process.env.ABGATE_REQUIRE_BROWSER === "1") {
  throw new Error(`${CHROMIUM} is missing and ABGATE_REQUIRE_BROWSER=1: install Debian's chromium (apt-get install -y chromium)`);
}
const skip = haveBrowser ? false : `${CHROMIUM} is not installed (apt-get install -y chromium); set ABGATE_REQUIRE_BROWSER=1 to make this a failure`;

let dir: string;
let backends: Backend[] = [];
let gw: Gateway;
let browser: Browser;

/**
 * Simulated users: a bounded loop of requests through the proxy with x-user-id, and an outcome for some units.
 * The treatment converts more often, so the report has something to say.
 */
class Traffic {
  #stop = false;
  #done: Promise<void>[] = [];
  #random = seededRandom(5);
  sent = 0;
  byVariant = new Map<string, number>();
  constructor(
    private readonly maxRequests: number,
    private readonly concurrency = 3,
  ) {}
  start(): this {
    for (let w = 0; w < this.concurrency; w++) this.#done.push(this.#worker(w));
    return this;
  }
  async #worker(w: number): Promise<void> {
    let i = 0;
    while (!this.#stop && this.sent < this.maxRequests) {
      this.sent++;
      const unit = `sim-${w}-${i++ % 150}`;
      const res = await fetch(`${gw.proxyUrl}/recommend?n=5`, { headers: { "x-user-id": unit } });
      await res.arrayBuffer();
      const variant = res.headers.get("x-abgate-variant") ?? "?";
      this.byVariant.set(variant, (this.byVariant.get(variant) ?? 0) + 1);
      if (this.#random() < (variant === "treatment" ? 0.2 : 0.1)) {
        const ev = await fetch(`${gw.adminUrl}/v1/events`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ unit, event: "watched", value: 1 + Math.round(this.#random() * 30) }),
        });
        assert.equal(ev.status, 200, await ev.text());
      }
      // A gentle, steady rate: the gateway, the browser and other engineers' tests share two cores.
      await new Promise((r) => setTimeout(r, 15));
    }
  }
  async stop(): Promise<void> {
    this.#stop = true;
    await Promise.all(this.#done);
  }
}

/** Which variant the proxy gives each of `n` units it has never seen. */
async function freshUnits(n: number, tag: string): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const res = await fetch(`${gw.proxyUrl}/recommend`, { headers: { "x-user-id": `fresh-${tag}-${i}` } });
    await res.arrayBuffer();
    const v = res.headers.get("x-abgate-variant") ?? "?";
    seen.set(v, (seen.get(v) ?? 0) + 1);
  }
  return seen;
}

/** A page that records every console error and uncaught exception. */
async function openPage(): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 400) errors.push(`response: ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  page.on("requestfailed", (r) => {
    // The event stream is cut when a page closes; anything else failing is a bug.
    if (!r.url().endsWith("/v1/stream")) errors.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`);
  });
  return { page, errors };
}

before(async () => {
  if (skip) return;
  execFileSync(process.execPath, [join(root, "scripts/build-dashboard.mjs"), "--quiet"], { stdio: "inherit" });
  dir = mkdtempSync(join(tmpdir(), "abgate-dash-e2e-"));
  backends = [await startBackend("control"), await startBackend("treatment")];
  const config = validateConfig(
    {
      experiment: "dashboard-e2e",
      listen: "127.0.0.1:0",
      admin: { listen: "127.0.0.1:0", token: TOKEN },
      store: "sqlite:./abgate.db",
      engine: "static",
      logLevel: "silent",
      strategy: { kind: "sticky" },
      variants: [
        { name: "control", weight: 50, url: backends[0]!.url, health: { intervalMs: 500 } },
        { name: "treatment", weight: 50, url: backends[1]!.url, health: { intervalMs: 500 } },
      ],
      metrics: [
        { name: "watched", kind: "conversion", event: "watched", windowMs: 3_600_000 },
        { name: "watch-minutes", kind: "mean", event: "watched" },
        { name: "latency", kind: "latency", guardrail: { maxRelativeIncrease: 0.2 } },
        { name: "errors", kind: "error_rate", guardrail: { maxAbsoluteIncrease: 0.01 } },
      ],
    },
    dir,
  );
  gw = await startGateway(config, { log: silentLogger });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  for (const b of backends) await b.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the dashboard shows a live experiment, and a weight change made in the page moves new units", { skip, timeout: 180_000 }, async () => {
  const traffic = new Traffic(6_000).start();
  let failurePage: Page | undefined;
  try {
    // Let some minutes' worth of buckets and events exist before the page first asks for the series.
    while (traffic.sent < 150) await new Promise((r) => setTimeout(r, 50));
    const { page, errors } = await openPage();
    failurePage = page;
    await page.goto(gw.adminUrl + "/");

    // Both variants, with replicas and live numbers.
    const rows = page.locator("table.variants tbody tr");
    await assert.doesNotReject(rows.first().waitFor());
    await page.locator('table.variants tr[data-variant="treatment"]').waitFor();
    assert.deepEqual(await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-variant"))), ["control", "treatment"]);
    await page.locator('[data-connection="live"]').waitFor();
    assert.match(await page.locator('table.variants tr[data-variant="control"] td[data-testid="weight"]').innerText(), /^50%/);

    // A non-empty traffic chart (a uPlot canvas over at least one minute with requests).
    const trafficChart = page.locator('[data-testid="traffic-charts"] .chart-canvas');
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="traffic-charts"] .chart-canvas')?.getAttribute("data-points")) > 0, null, { timeout: 30_000 });
    assert.equal(await trafficChart.locator("canvas").count(), 1);
    assert.match((await trafficChart.getAttribute("aria-label")) ?? "", /, (1 point, at|\d+ points from) .*; latest: control \d+, treatment \d+/);

    // The report says how old it is (one replayed on joining, or the last while new ones fail, is not the present).
    await page.locator('[data-testid="report-age"]').waitFor({ timeout: 30_000 });
    assert.match(await page.locator('[data-testid="report-age"]').innerText(), /^report of .+, \d+ (s|min) ago$/);
    // Every replica is up: no variant says its requests go elsewhere.
    assert.equal(await page.locator('[data-testid="no-healthy"]').count(), 0);

    // Updates as traffic flows, without a reload.
    const requestsCell = page.locator('table.variants tr[data-variant="control"] td[data-testid="requests"]');
    const before = Number((await requestsCell.innerText()).replace(/,/g, ""));
    await page.waitForFunction(
      (n) => Number(document.querySelector('table.variants tr[data-variant="control"] td[data-testid="requests"]')!.textContent!.replace(/,/g, "")) > n,
      before,
      { timeout: 15_000 },
    );

    // Read-only until the token is given: the controls are disabled and say why.
    const apply = page.getByRole("button", { name: "Apply weights" });
    assert.equal(await apply.isDisabled(), true);
    assert.match(await page.locator("#controls-locked").innerText(), /Read-only/);

    // Before the change, fresh units split between both variants.
    const split = await freshUnits(60, "before");
    assert.ok((split.get("control") ?? 0) > 5 && (split.get("treatment") ?? 0) > 5, `fresh units before: ${JSON.stringify([...split])}`);

    // A wrong token is refused and nothing unlocks.
    const tokenInput = page.getByLabel("Admin token", { exact: true });
    await tokenInput.fill("not-the-token");
    await page.getByRole("button", { name: "Unlock controls" }).click();
    await page.getByText("That token was refused.").waitFor();
    assert.equal(await apply.isDisabled(), true);

    // The right token, typed and submitted from the keyboard.
    await tokenInput.fill("");
    await tokenInput.focus();
    await page.keyboard.type(TOKEN);
    await page.keyboard.press("Enter");
    await page.getByText("Controls unlocked for this tab.").waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("abgate.adminToken")), TOKEN);
    assert.deepEqual(
      (await page.context().cookies()).map((c) => c.name),
      [],
    );
    // Unlocked, Apply waits for a change: applying the weights in force restarted the sample-ratio check for nothing.
    assert.equal(await apply.isDisabled(), true);

    await page.getByLabel("control", { exact: true }).fill("0");
    // Another operator changes the weights meanwhile: the page says its draft would replace them.
    const put = (weights: Record<string, number>) => fetch(`${gw.adminUrl}/v1/weights`, { method: "PUT", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: JSON.stringify(weights) });
    assert.equal((await put({ control: 1, treatment: 1 })).status, 200);
    await page.locator('[data-testid="draft-stale"]').waitFor({ timeout: 10_000 });
    assert.match(await page.locator('[data-testid="draft-stale"]').innerText(), /now control 1, treatment 1\. Apply would replace them/);
    await page.getByLabel("treatment", { exact: true }).fill("100");
    assert.equal(await apply.isDisabled(), false);
    await apply.click();
    await page.locator('[data-testid="control-status"]').getByText("Weights: done.").waitFor();
    // The live stream shows the new weights.
    await page.waitForFunction(() => /^0%/.test(document.querySelector('table.variants tr[data-variant="control"] td[data-testid="weight"]')?.textContent ?? ""), null, { timeout: 10_000 });
    assert.match(await page.locator('table.variants tr[data-variant="treatment"] td[data-testid="weight"]').innerText(), /^100%/);

    // New units now all go to the treatment.
    const after = await freshUnits(60, "after");
    assert.deepEqual([...after], [["treatment", 60]]);

    // Roll back asks first, with focus on Cancel: a second Enter (a key repeat) backs out, as Escape does, and
    // nothing changes.
    await page.getByRole("button", { name: "Roll back to control" }).click();
    const confirm = page.getByRole("button", { name: "Yes, roll back to control" });
    const cancel = page.getByRole("button", { name: "Cancel" });
    await confirm.waitFor();
    await page.waitForFunction((el) => el === document.activeElement, await cancel.elementHandle());
    await page.keyboard.press("Enter");
    await confirm.waitFor({ state: "detached" });
    await page.getByRole("button", { name: "Roll back to control" }).click();
    await confirm.waitFor();
    await page.waitForFunction((el) => el === document.activeElement, await cancel.elementHandle());
    await page.keyboard.press("Escape");
    await confirm.waitFor({ state: "detached" });
    // Focus is back on the button that opened the prompt, not at the top of the page.
    await page.waitForFunction((el) => el === document.activeElement, await page.getByRole("button", { name: "Roll back to control" }).elementHandle(), { timeout: 5_000 });
    assert.deepEqual([...(await freshUnits(10, "escaped"))], [["treatment", 10]]);
    // Confirmed from the keyboard (Shift+Tab from Cancel to the confirming button, then Enter), it sends new units
    // back to the control.
    await page.getByRole("button", { name: "Roll back to control" }).click();
    await confirm.waitFor();
    await page.waitForFunction((el) => el === document.activeElement, await cancel.elementHandle());
    await page.keyboard.press("Shift+Tab");
    await page.waitForFunction((el) => el === document.activeElement, await confirm.elementHandle());
    await page.keyboard.press("Enter");
    await page.locator('[data-testid="control-status"]').getByText("Rollback: done.").waitFor();
    assert.deepEqual([...(await freshUnits(20, "rolled-back"))], [["control", 20]]);
    // And promote puts them back on the treatment, for the picture below.
    await page.getByLabel("Variant to send 100% of traffic to").selectOption("treatment");
    await page.getByRole("button", { name: "Promote", exact: true }).click();
    await page.getByRole("button", { name: "Yes, promote treatment" }).click();
    await page.locator('[data-testid="control-status"]').getByText("Promote treatment: done.").waitFor();
    assert.deepEqual([...(await freshUnits(20, "promoted"))], [["treatment", 20]]);

    // Every control has an accessible name, every table header cell a scope.
    const unnamed = await page.evaluate(() =>
      Array.from(document.querySelectorAll("input, select, button, textarea"))
        .filter((el) => {
          const labelled = (el as HTMLInputElement).labels?.length || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
          return !labelled && !(el.tagName === "BUTTON" && el.textContent!.trim());
        })
        .map((el) => el.outerHTML.slice(0, 80)),
    );
    assert.deepEqual(unnamed, []);
    assert.equal(await page.locator("table.variants th:not([scope]), table.metric-table th:not([scope])").count(), 0);

    // The report arrives on the stream and fills the metric tables.
    await page.locator('section[data-metric="watched"] table.metric-table tr[data-variant="treatment"]').waitFor({ timeout: 20_000 });
    await page.locator('[data-testid="decision"]').waitFor();

    // Let the charts take in the change, then keep a picture for the README.
    await page.waitForTimeout(6_000);
    mkdirSync(join(root, "docs"), { recursive: true });
    await page.screenshot({ path: join(root, process.env.ABGATE_UPDATE_SCREENSHOT === "1" ? "docs/dashboard.png" : "test-results/dashboard.png"), fullPage: true });

    assert.deepEqual(errors, []);
    await page.close();
  } catch (err) {
    // What the page looked like when it went wrong, for whoever reads the failure (test-results/ is ignored).
    await failurePage?.screenshot({ path: join(root, "test-results/dashboard-failure.png"), fullPage: true }).catch(() => undefined);
    throw err;
  } finally {
    await traffic.stop();
  }
});

test("a week of per-minute data renders and updates without blocking the page", { skip, timeout: 120_000 }, async () => {
  const { page, errors } = await openPage();
  // A week of minutes for both variants, served in place of the store's (which has minutes of data here);
  // later incremental fetches get the real, small answer.
  const MINUTE = 60_000;
  const end = Math.floor(Date.now() / MINUTE) * MINUTE;
  const minutes = Array.from({ length: 7 * 24 * 60 }, (_, i) => end - (7 * 24 * 60 - 1 - i) * MINUTE);
  const column = (f: (i: number) => number) => minutes.map((_, i) => f(i));
  const variant = (name: string, rate: number) => ({
    name,
    requests: column((i) => 50 + (i % 60)),
    errors: column((i) => (i % 97 === 0 ? 1 : 0)),
    latencySumMs: column((i) => (50 + (i % 60)) * (20 + (i % 7))),
    latencyCount: column((i) => 50 + (i % 60)),
    newUnits: column(() => 20),
    conversions: { watched: column((i) => Math.round(20 * rate + (i % 3) - 1)), "watch-minutes": column(() => 2) },
  });
  const week = {
    experiment: "dashboard-e2e",
    stepMs: MINUTE,
    minutes,
    variants: [variant("control", 0.1), variant("treatment", 0.12)],
    metrics: [],
    truncated: false,
  };
  let served = false;
  await page.route("**/v1/series?**", async (route) => {
    if (served) return route.continue();
    served = true;
    await route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(week) });
  });
  await page.addInitScript(() => {
    const w = window as unknown as { longestTaskMs: number };
    w.longestTaskMs = 0;
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) w.longestTaskMs = Math.max(w.longestTaskMs, e.duration);
    }).observe({ type: "longtask", buffered: true });
  });
  const started = Date.now();
  await page.goto(gw.adminUrl + "/");
  // (the traffic chart leaves out the minute still filling, the last one here)
  await page.waitForFunction(
    (n) =>
      Array.from(document.querySelectorAll(`section:not([data-metric="watch-minutes"]) .chart-canvas`)).every(
        (el) => Number(el.getAttribute("data-points")) >= (el.closest('[data-testid="traffic-charts"]') ? n - 1 : n),
      ),
    minutes.length,
    { timeout: 30_000 },
  );
  const renderedMs = Date.now() - started;
  // Zoom into the traffic chart by dragging across its middle: the polls' new data must not undo it (uPlot's
  // setData rescaled to all the data every 5 s).
  const traffic = page.locator('[data-testid="traffic-charts"] .chart-canvas').first();
  // the whole week on the axis (before, uPlot's x range was always the last 30 minutes: "zoomed" from the start)
  assert.equal(await traffic.getAttribute("data-zoomed"), "0", "the whole week shown");
  await traffic.scrollIntoViewIfNeeded();
  const box = (await traffic.locator(".u-over").boundingBox())!;
  await page.mouse.move(box.x + box.width * 0.4, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2, { steps: 5 });
  await page.mouse.up();
  await page.waitForFunction(() => document.querySelector('[data-testid="traffic-charts"] .chart-canvas')?.getAttribute("data-zoomed") === "1", null, { timeout: 5_000 });
  // A few more live events and series polls on top of the week.
  await page.waitForTimeout(6_000);
  assert.equal(await traffic.getAttribute("data-zoomed"), "1", "still zoomed after a poll's new data");
  const roundTrip = Date.now();
  await page.evaluate(() => 1);
  const roundTripMs = Date.now() - roundTrip;
  if (process.env.DASH_WEEK_SHOT) await page.screenshot({ path: process.env.DASH_WEEK_SHOT, fullPage: true });
  const longestTaskMs = await page.evaluate(() => (window as unknown as { longestTaskMs: number }).longestTaskMs);
  console.log(`# week of minutes: charts drawn ${renderedMs} ms after navigation; longest main-thread task ${Math.round(longestTaskMs)} ms; evaluate round trip ${roundTripMs} ms`);
  assert.ok(longestTaskMs < 1_000, `longest task ${longestTaskMs} ms`);
  assert.ok(roundTripMs < 500, `page answered in ${roundTripMs} ms`);
  assert.deepEqual(errors, []);
  await page.close();
});

test("on a narrow phone (320 px) the page does not scroll sideways: wide tables and charts scroll in their own boxes", { skip, timeout: 60_000 }, async () => {
  const { page, errors } = await openPage();
  await page.setViewportSize({ width: 320, height: 800 });
  await page.goto(gw.adminUrl + "/");
  await page.locator('[data-testid="traffic-charts"] .chart-canvas').waitFor();
  await page.locator("#promote-variant").waitFor();
  assert.ok((await page.evaluate(() => document.documentElement.scrollWidth)) <= 320, `the page is ${await page.evaluate(() => document.documentElement.scrollWidth)} px wide`);
  // The boxes that do scroll can be scrolled from the keyboard too: focusable, and named for a screen reader.
  const boxes = await page.evaluate(() =>
    Array.from(document.querySelectorAll<HTMLElement>(".scroll")).filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => ((e.dataset.overflows = "1"), { tabIndex: e.tabIndex, role: e.getAttribute("role"), name: e.getAttribute("aria-label") })),
  );
  assert.ok(boxes.length >= 1, "at 320 px some table is wider than its box");
  for (const box of boxes) assert.ok(box.tabIndex === 0 && box.role === "region" && box.name, JSON.stringify(box));
  const box = page.locator(".scroll[data-overflows='1']").first();
  await box.focus();
  await page.keyboard.press("ArrowRight");
  await page.waitForFunction(() => (document.activeElement as HTMLElement | null)?.scrollLeft! > 0);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a token kept in the tab from before is checked again on load: a refused one locks the controls", { skip, timeout: 60_000 }, async () => {
  const { page, errors } = await openPage();
  await page.addInitScript(() => {
    if (sessionStorage.getItem("abgate.adminToken") === null) sessionStorage.setItem("abgate.adminToken", "a-token-from-an-earlier-run");
  });
  await page.goto(gw.adminUrl + "/");
  await page.locator("#controls-locked").waitFor({ timeout: 10_000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("abgate.adminToken")), null);
  assert.deepEqual(errors.filter((e) => !e.includes("/v1/dashboard/session")), []);
  await page.close();
});

test("a full report renders: values with intervals, lift, p-values, chance to win, SRM and the decision", { skip, timeout: 60_000 }, async () => {
  const { page, errors } = await openPage();
  // The report of the spec, sent on the stream in place of the gateway's, so that every field has a known value.
  const report = {
    experiment: "dashboard-e2e",
    generatedAt: new Date().toISOString(),
    variants: [
      { name: "control", weight: 50, units: 5012, requests: 20311 },
      { name: "treatment", weight: 50, units: 4987, requests: 20102 },
    ],
    srm: { pValue: 0.0004, mismatch: true },
    metrics: [
      {
        name: "watched",
        kind: "conversion",
        control: { units: 5012, value: 0.112 },
        comparisons: [
          {
            variant: "treatment",
            value: 0.131,
            absolute: { estimate: 0.019, ci: [0.007, 0.031] },
            relative: { estimate: 0.17, ci: [0.06, 0.28] },
            pValue: 0.002,
            pValueAdjusted: 0.004,
            pValueSequential: 0.01,
            sequentialCi: [0.004, 0.034],
            chanceToWin: 0.999,
            significant: true,
            adjusted: { control: 0.111, value: 0.13, periods: 3, excludedUnits: 12, weights: "precision" },
          },
        ],
      },
    ],
    guardrails: [{ name: "latency", variant: "treatment", ok: false, detail: "p99 up 31%" }],
    decision: { action: "promote", variant: "treatment", reason: "watched improved by 17% (p = 0.004)" },
  };
  // The treatment's replicas all down, and the store not answering.
  const replica = (variant: string, health: string) => ({ id: `${variant}-0`, variant, replica: 0, address: "127.0.0.1:1", health, checks: "active", outstanding: 0 });
  const live = {
    ts: Date.now(),
    experiment: {
      experiment: "dashboard-e2e", engine: "static", strategy: "sticky", control: "control", fallback: "control", allowForce: false, listen: "http://127.0.0.1:1", startedAt: new Date().toISOString(),
      variants: [
        { name: "control", weight: 50, replicas: [replica("control", "healthy")], requests: 10, healthyReplicas: 1 },
        { name: "treatment", weight: 50, replicas: [replica("treatment", "unhealthy")], requests: 0, healthyReplicas: 0 },
      ],
      counts: { exposures: 5, events: 1, requests: 10, readAt: "2026-11-28T12:00:00.000Z", storeError: "the store did not answer within 3000 ms" },
      metrics: [{ name: "watched", kind: "conversion" }],
    },
    // The fallback served 4.5 of the treatment's requests per second: they show in its row, not as nothing.
    live: [
      { variant: "control", requestsPerSecond: 9, fallbackPerSecond: 0, p50Ms: 5, p99Ms: 20, errorRate: 0, requests: 10 },
      { variant: "treatment", requestsPerSecond: 0, fallbackPerSecond: 4.5, p50Ms: null, p99Ms: null, errorRate: null, requests: 0 },
    ],
  };
  const meta = {
    experiment: "dashboard-e2e",
    control: "control",
    variants: ["control", "treatment"],
    metrics: [{ name: "watched", kind: "conversion" }],
    alpha: 0.05,
    liveIntervalMs: 1000,
    reportIntervalMs: 5000,
  };
  await page.route("**/v1/stream", (route) =>
    route.fulfill({
      status: 200,
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
      body: `retry: 60000\n\nevent: meta\ndata: ${JSON.stringify(meta)}\n\nevent: report\ndata: ${JSON.stringify(report)}\n\nevent: live\ndata: ${JSON.stringify(live)}\n\n`,
    }),
  );
  await page.goto(gw.adminUrl + "/");
  const row = page.locator('section[data-metric="watched"] tr[data-variant="treatment"]');
  await row.waitFor();
  const cells = await row.locator("th, td").allInnerTexts();
  // value, its 95% Wilson interval from the variant's units, Δ, its CI, lift, its CI, p, p adjusted, p sequential, chance to win
  assert.deepEqual(cells.slice(1), ["13.10%", "[12.19%, 14.06%]", "+1.90 pp", "[+0.70 pp, +3.10 pp]", "+17.0%", "[+6.0%, +28.0%]", "0.002", "0.004", "0.010", "99.9%"]);
  assert.match(cells[0]!, /treatment.*significantly better/);
  const controlCells = await page.locator('section[data-metric="watched"] tr[data-variant="control"] td').allInnerTexts();
  assert.deepEqual(controlCells, ["11.20%", "[10.36%, 12.10%]", "baseline"]);
  assert.match(await page.locator('[data-testid="decision"]').innerText(), /promote treatment/i);
  assert.match(await page.getByText("watched improved by 17%").innerText(), /p = 0\.004/);
  assert.match(await page.locator('[data-testid="srm"]').innerText(), /Mismatch \(p < 0\.001\)/);
  await page.getByText("BREACHED").waitFor();
  assert.equal(await page.locator('[data-testid="no-healthy"]').innerText(), "No healthy replica: its requests are served by control (the report still counts them as treatment's).");
  assert.equal(await page.locator('table.variants tr[data-variant="treatment"] [data-testid="fallback-rps"]').innerText(), "+ 4.5 via control");
  assert.equal(await page.locator('table.variants tr[data-variant="control"] [data-testid="fallback-rps"]').count(), 0);
  assert.match(await page.locator('[data-testid="store-error"]').innerText(), /counts as read at .*2026.*; the store: the store did not answer within 3000 ms/);
  assert.equal(
    await page.locator('[data-adjusted="treatment"]').innerText(),
    "treatment: the weights changed during the experiment, so Δ, lift, p and chance to win compare it with control within each of 3 weight periods, weighted by their precision: 13.00% vs 11.10% (12 units of periods without both left out). The values above pool every period.",
  );
  assert.match(await page.locator('[data-testid="report-age"]').innerText(), /^report of .+, \d+ s ago$/);
  if (process.env.DASH_REPORT_SHOT) await page.screenshot({ path: process.env.DASH_REPORT_SHOT, fullPage: true });
  // The stream was replaced, so the live table waits; nothing else may complain.
  assert.deepEqual(errors.filter((e) => !e.includes("/v1/stream")), []);
  await page.close();
});

test("while the event stream is down, the variants table says it is not live, dated, and greys out; it recovers", { skip, timeout: 60_000 }, async () => {
  const { page, errors } = await openPage();
  const view = await (await fetch(`${gw.adminUrl}/v1/experiment`)).json();
  const asOf = Date.UTC(2026, 10, 29, 9, 30);
  const meta = { experiment: "dashboard-e2e", control: "control", variants: ["control", "treatment"], metrics: [], alpha: 0.05, liveIntervalMs: 1000, reportIntervalMs: 5000 };
  let streams = 0;
  // The first stream sends one live event and ends (as when abgate stops); the browser retries after 1.5 s and
  // then gets the real stream.
  await page.route("**/v1/stream", (route) => {
    if (streams++ > 0) return route.continue();
    return route.fulfill({
      status: 200,
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
      body: `retry: 1500\n\nevent: meta\ndata: ${JSON.stringify(meta)}\n\nevent: live\ndata: ${JSON.stringify({ ts: asOf, experiment: view, live: [] })}\n\n`,
    });
  });
  await page.goto(gw.adminUrl + "/");
  const note = page.locator('[data-testid="stale"]');
  await note.waitFor();
  assert.equal(await note.innerText(), `Not live: as of ${await page.evaluate((ms) => new Date(ms).toLocaleString(), asOf)}. Health, rates and counts are from then, until abgate answers again.`);
  assert.equal(await page.locator("[data-connection]").getAttribute("data-connection"), "reconnecting");
  assert.equal(await page.locator('[data-stale="true"] table.variants').count(), 1);
  // Back: the real stream answers, the note goes.
  await page.locator('[data-connection="live"]').waitFor({ timeout: 20_000 });
  await note.waitFor({ state: "detached" });
  assert.equal(await page.locator('[data-stale="true"]').count(), 0);
  assert.deepEqual(errors.filter((e) => !e.includes("/v1/stream")), []);
  await page.close();
});

test("a stream that goes silent without closing is called not live after a few live intervals, and replaced", { skip, timeout: 60_000 }, async () => {
  const { createServer } = await import("node:http");
  const { page, errors } = await openPage();
  const view = await (await fetch(`${gw.adminUrl}/v1/experiment`)).json();
  const asOf = Date.UTC(2026, 10, 29, 9, 45);
  const meta = { experiment: "dashboard-e2e", control: "control", variants: ["control", "treatment"], metrics: [], alpha: 0.05, liveIntervalMs: 1000, reportIntervalMs: 5000 };
  // A stream that sends one live event and then nothing, holding the connection open (a wedged host).
  const silent = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.write(`event: meta\ndata: ${JSON.stringify(meta)}\n\nevent: live\ndata: ${JSON.stringify({ ts: asOf, experiment: view, live: [] })}\n\n`);
  });
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
  const silentUrl = `http://127.0.0.1:${(silent.address() as { port: number }).port}/v1/stream`;
  let streams = 0;
  // (the real stream answers its first live numbers at once: held back a second, so that the note can be seen)
  await page.route("**/v1/stream", async (route) => {
    if (streams++ === 0) return route.continue({ url: silentUrl });
    await new Promise((r) => setTimeout(r, 1000));
    return route.continue();
  });
  try {
    await page.goto(gw.adminUrl + "/");
    await page.locator('[data-connection="live"]').waitFor();
    const openedAt = Date.now();
    const note = page.locator('[data-testid="stale"]');
    // (read at once: the new stream may make the page live again within milliseconds)
    const text = await (await page.waitForFunction(() => document.querySelector('[data-testid="stale"]')?.textContent ?? null, null, { timeout: 15_000, polling: 50 })).jsonValue();
    const silentForMs = Date.now() - openedAt;
    assert.ok(silentForMs >= 4_000, `called stale after ${silentForMs} ms of silence (5 s expected)`);
    assert.match(String(text), /^Not live: as of /);
    // the page opened a new stream, which the real gateway answers
    await page.locator('[data-connection="live"]').waitFor({ timeout: 20_000 });
    await note.waitFor({ state: "detached" });
    assert.equal(streams, 2);
    assert.deepEqual(errors.filter((e) => !e.includes("/v1/stream")), []);
  } finally {
    await page.close();
    silent.closeAllConnections();
    silent.close();
  }
});

/** A page init script that keeps every EventSource the page makes in window.sources (text: the page runs it as is). */
const RECORD_EVENT_SOURCES = `
    const made = [];
    window.sources = made;
    const Native = window.EventSource;
    window.EventSource = class extends Native {
      constructor(url, init) {
        super(url, init);
        made.push(this);
      }
    };
`;

test("a hidden tab lets its stream go (six tabs held every connection the browser gives a host), and the report's age keeps growing", { skip, timeout: 60_000 }, async () => {
  const { page, errors } = await openPage();
  // Every EventSource the page makes, to see which are still open; and a way to hide the tab as a browser does.
  // (a string: the function's compiled text could name helpers the page does not have)
  await page.addInitScript(`
    ${RECORD_EVENT_SOURCES}
    let hidden = false;
    Object.defineProperty(document, "hidden", { get: () => hidden, configurable: true });
    window.setHidden = (h) => {
      hidden = h;
      document.dispatchEvent(new Event("visibilitychange"));
    };
  `);
  await page.goto(gw.adminUrl + "/");
  await page.locator('[data-connection="live"]').waitFor({ timeout: 20_000 });
  await page.locator('[data-testid="report-age"]').waitFor({ timeout: 30_000 });
  const open = () => page.evaluate(() => (window as unknown as { sources: EventSource[] }).sources.filter((s) => s.readyState !== EventSource.CLOSED).length);
  assert.equal(await open(), 1);
  await page.evaluate(() => (window as unknown as { setHidden: (h: boolean) => void }).setHidden(true));
  assert.equal(await open(), 0, "no stream while hidden");
  assert.equal(await page.locator("[data-connection]").getAttribute("data-connection"), "paused");
  // With no live numbers coming, the report still gets older by the page's clock.
  const age = async () => Number(/, (\d+) s ago$/.exec(await page.locator('[data-testid="report-age"]').innerText())?.[1]);
  const before = await age();
  await new Promise((r) => setTimeout(r, 3_000));
  assert.ok((await age()) >= before + 2, `the age went from ${before} to ${await age()} s`);
  assert.equal(await open(), 0, "the watchdog does not reopen it while hidden");
  await page.evaluate(() => (window as unknown as { setHidden: (h: boolean) => void }).setHidden(false));
  await page.locator('[data-connection="live"]').waitFor({ timeout: 20_000 });
  assert.equal(await open(), 1);
  assert.deepEqual(errors.filter((e) => !e.includes("/v1/stream")), []);
  await page.close();
});

test("after a restart on another experiment or store, the charts start over instead of keeping the old run's minutes", { skip, timeout: 60_000 }, async () => {
  const { page, errors } = await openPage();
  await page.addInitScript(RECORD_EVENT_SOURCES);
  // some minutes of data, so that the page's later fetches are incremental
  await freshUnits(5, "restart");
  const view = (await (await fetch(`${gw.adminUrl}/v1/experiment`)).json()) as { experiment: string; startedAt: string };
  const meta = { experiment: "other-run", control: "control", variants: ["control", "treatment"], metrics: [], alpha: 0.05, liveIntervalMs: 1000, reportIntervalMs: 5000 };
  const seriesSince: number[] = [];
  page.on("request", (r) => {
    const m = /\/v1\/series\?sinceMs=(\d+)/.exec(r.url());
    if (m) seriesSince.push(Number(m[1]));
  });
  let streams = 0;
  // The first stream is the real one; the next says another run is being served (another experiment, started now).
  await page.route("**/v1/stream", (route) => {
    if (streams++ === 0) return route.continue();
    const other = { ...view, experiment: "other-run", startedAt: new Date().toISOString() };
    return route.fulfill({
      status: 200,
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
      body: `retry: 60000\n\nevent: meta\ndata: ${JSON.stringify(meta)}\n\nevent: live\ndata: ${JSON.stringify({ ts: Date.now(), experiment: other, live: [] })}\n\n`,
    });
  });
  await page.goto(gw.adminUrl + "/");
  await page.locator('[data-connection="live"]').waitFor({ timeout: 20_000 });
  const week = 7 * 24 * 3_600_000;
  // the first fetch brings a week; the next ones only the last minutes
  for (let i = 0; i < 100 && seriesSince.length < 2; i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(seriesSince.length >= 2 && seriesSince.at(-1)! > Date.now() - week / 2, JSON.stringify(seriesSince));
  const fetchesBefore = seriesSince.length;
  // The stream goes (as when abgate stops): the watchdog opens another, which brings the other run.
  await page.evaluate(() => (window as unknown as { sources: EventSource[] }).sources.forEach((s) => s.close()));
  await page.waitForFunction(() => document.title === "abgate · other-run", null, { timeout: 20_000 });
  for (let i = 0; i < 50 && !seriesSince.slice(fetchesBefore).some((t) => t < Date.now() - week / 2); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(seriesSince.slice(fetchesBefore).some((t) => t < Date.now() - week / 2), `a fetch from scratch after the new run: ${JSON.stringify(seriesSince.slice(fetchesBefore))}`);
  assert.deepEqual(errors.filter((e) => !e.includes("/v1/stream")), []);
  await page.close();
});
