import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCli } from "../../test/helpers/cli.ts";
import { ConfigError } from "../errors.ts";
import { expandEnv, parseConfig, parseHostPort } from "./load.ts";

const base = "experiment: exp\nengine: static\nvariants:\n  - { name: control, url: 'http://127.0.0.1:9001' }\n  - { name: treatment, url: 'http://127.0.0.1:9002' }\n";

/** The same two variants as local processes (for keys only those take, such as env). */
const processBase = "experiment: exp\nengine: process\nvariants:\n  - { name: control, command: [node, a.js] }\n  - { name: treatment, command: [node, b.js] }\n";

function issues(text: string, env: NodeJS.ProcessEnv = process.env): string[] {
  try {
    parseConfig(text, "/tmp", env);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.issues.map((i) => `${i.path}: ${i.message}`);
  }
  assert.fail("expected a ConfigError");
}

test("defaults follow the spec", () => {
  const c = parseConfig(base, "/srv/exp");
  assert.deepEqual(c.listen, { host: "127.0.0.1", port: 8080 });
  assert.deepEqual(c.admin.listen, { host: "127.0.0.1", port: 8081 });
  assert.equal(c.store, "sqlite:/srv/exp/abgate.db");
  assert.equal(parseConfig(`${base}store: "sqlite::memory:"\n`, "/srv/exp").store, "sqlite::memory:", "a throwaway database, not a file named :memory:");
  assert.equal(c.strategy.kind, "sticky");
  assert.equal(c.salt, "exp");
  assert.equal(c.control, "control");
  assert.equal(c.fallback, "control");
  assert.deepEqual(c.unit, { header: "x-user-id", query: "user", cookie: "abgate_uid" });
  assert.equal(c.allowForce, false);
  assert.deepEqual(c.analysis, { alpha: 0.05, srmThreshold: 0.001, correction: "holm" });
});

test("${ENV} and ${ENV:-default} expand; $${ is literal", () => {
  assert.equal(expandEnv("a ${X} b ${Y:-dflt} c $${Z}", { X: "1" }), "a 1 b dflt c ${Z}");
  const c = parseConfig(base.replace("experiment: exp", "experiment: ${NAME}") + "admin: { token: '${TOK}' }\n", "/tmp", { NAME: "from-env", TOK: "" });
  assert.equal(c.experiment, "from-env");
  assert.equal(c.admin.token, undefined, "an empty token means none: one is generated");
  const unquoted = parseConfig(base + "admin:\n  token: ${UNSET_TOKEN}\n  ingestToken: ${UNSET_TOKEN}\n", "/tmp", {});
  assert.equal(unquoted.admin.token, undefined, "the spec's unquoted form, with the variable unset, is null in YAML: no token");
  assert.equal(unquoted.admin.ingestToken, undefined);
});

test("an unquoted reference to an empty or unset variable reads as the empty string, as in docker compose, not as null", () => {
  const text =
    "experiment: exp\nengine: process\nstrategy: { salt: ${SALT_UNSET} }\nvariants:\n" +
    "  - { name: control, command: [node, a.js, ${ARG_UNSET}], env: { MODEL: ${MODEL_UNSET}, DASH: ${EMPTY-d}, ASK: ${EMPTY?needed} } }\n" +
    "  - { name: treatment, command: [node, b.js] }\n";
  const c = parseConfig(text, "/tmp", { EMPTY: "" });
  assert.deepEqual(c.variants[0]!.env, { MODEL: "", DASH: "", ASK: "" }, "${A-d} and ${A?msg} with A set but empty are empty too");
  assert.deepEqual(c.variants[0]!.command, ["node", "a.js", ""]);
  assert.equal(c.strategy.salt, "");
  assert.equal(c.salt, "exp", "an empty salt is the default one, the experiment's name: experiments with the variable unset would otherwise hash units alike");
});

test("forwardedHeaders.trustedIPs: addresses and CIDR ranges; anything else is refused by its index", () => {
  assert.deepEqual(parseConfig(`${base}forwardedHeaders: { trustedIPs: [127.0.0.1, 10.0.0.0/8, "::1", "fd00::/8"] }\n`, "/tmp", {}).forwardedHeaders.trustedIPs, ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]);
  assert.deepEqual(parseConfig(base, "/tmp", {}).forwardedHeaders, { trustedIPs: [] });
  assert.deepEqual(issues(`${base}forwardedHeaders: { trustedIPs: [10.0.0.0/33, localhost, "::1/129", 10.0.0.0/x] }\n`), [
    "forwardedHeaders.trustedIPs[0]: an IP address or a CIDR range (127.0.0.1, 10.0.0.0/8, ::1)",
    "forwardedHeaders.trustedIPs[1]: an IP address or a CIDR range (127.0.0.1, 10.0.0.0/8, ::1)",
    "forwardedHeaders.trustedIPs[2]: an IP address or a CIDR range (127.0.0.1, 10.0.0.0/8, ::1)",
    "forwardedHeaders.trustedIPs[3]: an IP address or a CIDR range (127.0.0.1, 10.0.0.0/8, ::1)",
  ]);
});

test("unit: each key keeps its default when the block names others; null turns a source off", () => {
  assert.deepEqual(parseConfig(`${base}unit: { cookie: sid }\n`, "/tmp", {}).unit, { header: "x-user-id", query: "user", cookie: "sid" });
  assert.deepEqual(parseConfig(`${base}unit: {}\n`, "/tmp", {}).unit, { header: "x-user-id", query: "user", cookie: "abgate_uid" });
  assert.deepEqual(parseConfig(`${base}unit: { header: X-Account, query: null }\n`, "/tmp", {}).unit, { header: "x-account", query: null, cookie: "abgate_uid" });
  assert.deepEqual(parseConfig(`${base}unit:\n  header:\n  query: ~\n`, "/tmp", {}).unit, { header: null, query: null, cookie: "abgate_uid" });
  // the cookie cannot be turned off, and the error says why rather than "expected string, received null"
  assert.deepEqual(issues(`${base}unit: { cookie: null }\n`), ["unit.cookie: a cookie name: unlike header and query it cannot be null, since it keeps the unit abgate makes up for a client that names none"]);
});

test("every error names its key path and what was expected", () => {
  const got = issues(
    "experiment: Bad Name\nengine: static\nlisten: 8080\nunit: { header: x-user, colour: 1 }\nvariants:\n  - { name: control, weight: -1, url: 'http://127.0.0.1:1' }\n  - { name: control, url: 'not a url' }\nmetrics:\n  - { name: w, kind: conversion }\n  - { name: l, kind: latency, guardrail: {} }\nanalysis: { correction: bonferroni }\n",
  );
  const joined = got.join("\n");
  for (const path of ["experiment:", "listen:", "unit.colour: unknown key", "variants[0].weight:", "variants[1].url:", "metrics[0].event:", "metrics[1].guardrail:", "analysis.correction:"]) {
    assert.ok(joined.includes(path), `${path} in\n${joined}`);
  }
});

test("semantic errors: engine sources, duplicates, weights, fallback, bandit", () => {
  assert.match(issues(base.replace("engine: static", "engine: docker")).join(), /variants\[0\]: engine docker needs exactly one of build or image/);
  assert.match(issues(base.replace("name: treatment", "name: control")).join(), /variants\[1\]\.name: duplicate variant name/);
  assert.match(issues(base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', weight: 0").replace("url: 'http://127.0.0.1:9002'", "url: 'http://127.0.0.1:9002', weight: 0")).join(), /variants: weights must sum to a positive number/);
  assert.match(issues(base + "fallback: nobody\n").join(), /fallback: "reject" or a variant name/);
  assert.match(issues(base + "strategy: { kind: bandit }\n").join(), /strategy.kind: bandit needs a conversion metric/);
  assert.match(issues("experiment: x\nengine: static\nvariants: []\n").join(), /variants: at least one variant/);
  assert.match(issues("engine: static\nvariants: []\n").join(), /experiment: required/);
  assert.match(issues("experiment: x\nengine: static\nvariants: [\n").join(), /^line \d+:/);
  const swarm = "experiment: x\nengine: swarm\nnetwork: bridge\nvariants:\n  - { name: control, image: 'm:1' }\n";
  assert.deepEqual(issues(swarm), ["network: host with engine swarm (bridge, with published ports, is for engine docker)"]);
  assert.doesNotThrow(() => parseConfig(swarm.replace("engine: swarm", "engine: docker"), "/tmp"));
});

test("host:port parsing, IPv6 included", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:0"), { host: "127.0.0.1", port: 0 });
  assert.deepEqual(parseHostPort("[::1]:8080"), { host: "::1", port: 8080 });
});

test("a variable's value is data, not YAML: comments, colons and digits stay in the string", () => {
  const saltOf = (value: string) => parseConfig(base + "strategy:\n  salt: ${SALT}\n", "/tmp", { SALT: value }).salt;
  for (const value of ["s3cret #2024", "0123456789", "true", "a: b", "[x", "line1\nline2", "'quoted'", "${NOT_AGAIN}"]) {
    assert.equal(saltOf(value), value, JSON.stringify(value));
  }
  const tokenOf = (value: string) => parseConfig(base + "admin:\n  token: ${TOK}\n", "/tmp", { TOK: value }).admin.token;
  for (const value of ["s3cret#2024", "0123456789", "true", "a:b", "[x", "'quoted'"]) assert.equal(tokenOf(value), value, JSON.stringify(value));
  const flow = parseConfig(processBase.replace("command: [node, a.js]", "command: [node, a.js], env: { MODEL: ${M}, TAG: x-${M} }"), "/tmp", { M: "pop # ular" });
  assert.deepEqual(flow.variants[0]!.env, { MODEL: "pop # ular", TAG: "x-pop # ular" });
  const typed = parseConfig(base.replace("url: 'http://127.0.0.1:9002'", "url: 'http://127.0.0.1:9002', weight: ${W}") + "allowForce: ${FORCE}\nlisten: 127.0.0.1:${PORT}\n", "/tmp", { W: "3", FORCE: "true", PORT: "8089" });
  assert.equal(typed.variants[1]!.weight, 3);
  assert.equal(typed.allowForce, true);
  assert.deepEqual(typed.listen, { host: "127.0.0.1", port: 8089 });
  assert.match(issues(base.replace("url: 'http://127.0.0.1:9002'", "url: 'http://127.0.0.1:9002', weight: ${W}"), { W: "heavy" }).join(), /variants\[1\]\.weight: .* \(it is the value of \$\{W\}\)$/);
});

test("validate refuses what serve would: non-http or path URLs, ports past 65535, admin on the proxy's address", () => {
  assert.match(issues(base.replace("http://127.0.0.1:9001", "ftp://127.0.0.1:9001")).join(), /variants\[0\]\.url: an http:\/\/ URL \(got "ftp:\/\/127\.0\.0\.1:9001"\)/);
  // No scheme: URL reads "localhost:" as one; the message shows what was written.
  assert.match(issues(base.replace("http://127.0.0.1:9001", "localhost:24302")).join(), /variants\[0\]\.url: an http:\/\/ URL \(got "localhost:24302"\)/);
  assert.match(issues(base.replace("http://127.0.0.1:9001", "http://127.0.0.1:9001/api")).join(), /variants\[0\]\.url: an origin without path/);
  assert.match(issues(base + "listen: 127.0.0.1:99999\n").join(), /^listen: host:port with a port from 0 to 65535/m);
  assert.match(issues(base + "listen: 127.0.0.1:8090\nadmin: { listen: '127.0.0.1:8090' }\n").join(), /admin\.listen: an address other than listen's/);
  assert.doesNotThrow(() => parseConfig(base + "listen: 127.0.0.1:0\nadmin: { listen: '127.0.0.1:0' }\n", "/tmp", {}));
  // the same port under another spelling of the address: a wildcard takes it everywhere, localhost is 127.0.0.1
  for (const admin of ["0.0.0.0:8090", "localhost:8090", "'[::]:8090'"]) {
    assert.match(issues(base + `listen: 127.0.0.1:8090\nadmin: { listen: ${admin} }\n`).join(), /admin\.listen: a port other than listen's: .* cannot both be listened on/, admin);
  }
  assert.doesNotThrow(() => parseConfig(base + "listen: 127.0.0.1:8090\nadmin: { listen: '127.0.0.2:8090' }\n", "/tmp", {}));
  // an IPv4 wildcard leaves IPv6 addresses free
  assert.doesNotThrow(() => parseConfig(base + "listen: 0.0.0.0:8090\nadmin: { listen: '[::1]:8090' }\n", "/tmp", {}));
});

test("a variant's pinned port may not be the proxy's or the admin's (its replicas would fight abgate for it)", () => {
  const proc = "experiment: exp\nengine: process\nlisten: 127.0.0.1:8090\nadmin: { listen: 127.0.0.1:8091 }\nvariants:\n  - { name: control, command: [node, s.js], port: 8090 }\n  - { name: treatment, command: [node, s.js], port: 8088, replicas: 4 }\n";
  const got = issues(proc).join("\n");
  assert.match(got, /^variants\[0\]\.port: a port other than listen's 8090 \(this variant's replicas would get port 8090\)$/m);
  assert.match(got, /^variants\[1\]\.port: a port other than listen's 8090 \(this variant's replicas would get ports 8088-8091 \(one per replica\)\)$/m);
  assert.match(got, /^variants\[1\]\.port: a port other than admin\.listen's 8091/m);
  assert.doesNotThrow(() => parseConfig(proc.replace("port: 8090", "port: 8092").replace("port: 8088, replicas: 4", "port: 8093, replicas: 4"), "/tmp", {}));
});

test("a variant key another engine reads is refused, naming the engine it is for", () => {
  const got = issues(
    "experiment: exp\nengine: process\nvariants:\n" +
      "  - { name: control, command: [node, a.js], url: 'http://127.0.0.1:9001', buildArgs: { A: b }, dockerfile: D }\n" +
      "  - { name: treatment, command: [node, b.js], image: img }\n",
  ).join("\n");
  assert.match(got, /^variants\[0\]\.url: not used by engine process \(it is for engine static\)$/m);
  assert.match(got, /^variants\[0\]\.buildArgs: not used by engine process \(it is for engine docker or swarm\)$/m);
  assert.match(got, /^variants\[0\]\.dockerfile: not used by engine process/m);
  assert.match(got, /^variants\[1\]\.image: not used by engine process/m);
  const statics = issues(base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', port: 9100, cwd: ., env: { A: b }")).join("\n");
  assert.match(statics, /^variants\[0\]\.port: not used by engine static \(it is for engine docker or swarm or process\)$/m);
  assert.match(statics, /^variants\[0\]\.cwd: not used by engine static \(it is for engine process\)$/m);
  assert.match(statics, /^variants\[0\]\.env: not used by engine static/m);
  // with no single source, the one message lists what was found
  assert.deepEqual(issues("experiment: exp\nengine: process\nvariants:\n  - { name: control, url: 'http://127.0.0.1:9001' }\n"), ["variants[0]: engine process needs exactly one of command (found url)"]);
  // command is a list (no shell splits a string); numbers in it are their text, as in env
  assert.deepEqual(issues(processBase.replace("command: [node, a.js]", "command: node a.js")), [
    `variants[0].command: a list of the program and its arguments, such as [node, server.js] (a string is not split; for a shell line write [sh, -c, "..."])`,
  ]);
  assert.deepEqual(issues(processBase.replace("command: [node, a.js]", "command: []")), ["variants[0].command: a list with the program first, such as [node, server.js]"]);
  assert.deepEqual(parseConfig(processBase.replace("command: [node, a.js]", "command: [server, --workers, 4, --debug, true]"), "/tmp", {}).variants[0].command, ["server", "--workers", "4", "--debug", "true"]);
  // as written, not as YAML's number printed again
  const written = parseConfig(processBase.replace("command: [node, a.js]", "command: [server, 1.10, 0x1F, 007, 1e3, 12345678901234567890], env: { V: 1.10, W: 007 }"), "/tmp", {}).variants[0];
  assert.deepEqual(written.command, ["server", "1.10", "0x1F", "007", "1e3", "12345678901234567890"]);
  assert.deepEqual([written.env.V, written.env.W], ["1.10", "007"]);
});

test("variants' pinned ports may not overlap each other, nor run past 65535", () => {
  const proc = "experiment: exp\nengine: process\nvariants:\n  - { name: control, command: [node, s.js], port: 9000, replicas: 3 }\n  - { name: treatment, command: [node, s.js], port: 9002 }\n  - { name: big, command: [node, s.js], port: 65535, replicas: 2 }\n";
  const got = issues(proc).join("\n");
  assert.match(got, /^variants\[1\]\.port: ports apart from variants\[0\]'s \(control's replicas get 9000 up to 9002; these get 9002 up to 9002\)$/m);
  assert.match(got, /^variants\[2\]\.port: a port that leaves room for 2 replicas \(one port each\) up to 65535; the last would get 65536$/m);
  assert.doesNotThrow(() => parseConfig(proc.replace("port: 9002 }", "port: 9003 }").replace("port: 65535, replicas: 2", "port: 65534, replicas: 2"), "/tmp", {}));
});

test("weights whose sum overflows are refused at variants, as serve would refuse them", () => {
  const huge = base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', weight: 1e308").replace("url: 'http://127.0.0.1:9002'", "url: 'http://127.0.0.1:9002', weight: 1e308");
  assert.match(issues(huge).join("\n"), /^variants: weights must sum to a finite number \(they overflow to Infinity\)/m);
});

test("a YAML alias bomb is a config error, not a crash", () => {
  const bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n";
  assert.match(issues(bomb).join("\n"), /^: YAML aliases \(\*name\) expand to too many nodes/m);
  // a few aliases are fine
  const aliased = parseConfig(base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', health: &h { path: /h }").replace("url: 'http://127.0.0.1:9002'", "url: 'http://127.0.0.1:9002', health: *h"), "/tmp", {});
  assert.equal(aliased.variants[1]!.health?.path, "/h");
});

test("url with replicas > 1 is refused (one url is one endpoint; urls lists several)", () => {
  assert.match(issues(base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', replicas: 3")).join("\n"), /^variants\[0\]\.replicas: 1 with url \(one endpoint\); list several endpoints with urls \(got 3\)$/m);
  assert.doesNotThrow(() => parseConfig(base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', replicas: 1"), "/tmp", {}));
});

test("$${ is a literal ${ inside YAML flow maps and sequences too", () => {
  const c = parseConfig(
    // (a function as replace's replacement: in a string, `$$` would stand for `$`)
    processBase.replace("command: [node, a.js]", () => "command: [node, a.js], env: { A: $${T}, B: x-$${T}-y, C: '$${T}' }") + "metrics: [{ name: m, kind: conversion, event: $${T} }]\n",
    "/tmp",
    { T: "from-env" },
  );
  assert.deepEqual(c.variants[0]!.env, { A: "${T}", B: "x-${T}-y", C: "${T}" });
  assert.equal(c.metrics[0]!.kind === "conversion" ? c.metrics[0]!.event : undefined, "${T}");
});

test("abgate validate exits 2 with the key path for overflowing weights, an alias bomb, url with replicas", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-validate-"));
  const cases: [string, string, RegExp][] = [
    ["huge", base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', weight: 1e308").replace("url: 'http://127.0.0.1:9002'", "url: 'http://127.0.0.1:9002', weight: 1e308"), /^  variants: weights must sum to a finite number/m],
    ["alias", "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n", /^  \(root\): YAML aliases \(\*name\) expand to too many nodes/m],
    ["urlrep", base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', replicas: 3"), /^  variants\[0\]\.replicas: 1 with url/m],
  ];
  for (const [name, text, expected] of cases) {
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, text);
    const res = await runCli(["validate", "-c", file]);
    assert.equal(res.code, 2, `${name}: ${res.stdout}${res.stderr}`);
    assert.match(res.stderr, /^abgate: config error$/m, name);
    assert.match(res.stderr, expected, `${name}: ${res.stderr}`);
  }
});

test("errors a newcomer meets say what is wrong: an empty variable by name, a duplicate key by its line, replicas of urls", () => {
  assert.deepEqual(issues(base + "listen: ${NU_LISTEN}\n", {}), ["listen: host:port, e.g. 127.0.0.1:8080 (it is ${NU_LISTEN}, which is empty or not set)"]);
  assert.deepEqual(issues(base + "experiment: again\n"), ['line 6: duplicate key "experiment" (a key may appear once in a mapping)']);
  // Other YAML errors do not echo the line: it may hold a token.
  assert.deepEqual(issues('experiment: x\nadmin: { token: "hunter2-secret }\nengine: static\n').filter((i) => i.includes("hunter2")), []);
  const urls = parseConfig(base.replace("url: 'http://127.0.0.1:9002'", "urls: ['http://127.0.0.1:9002', 'http://127.0.0.1:9003']"), "/tmp", {});
  assert.deepEqual(urls.variants.map((v) => v.replicas), [1, 2], "one replica per url, as the static engine runs them");
});

test("YAML merge keys share settings between variants; top-level x- keys hold their anchors", () => {
  const c = parseConfig(
    "experiment: exp\nengine: process\nx-model: &model { replicas: 2, env: { MODEL: pop } }\nvariants:\n" +
      "  - { <<: *model, name: control, command: [node, a.js] }\n  - { <<: *model, name: treatment, command: [node, b.js], replicas: 3 }\n",
    "/tmp",
    {},
  );
  assert.deepEqual(c.variants.map((v) => [v.name, v.replicas, v.env]), [["control", 2, { MODEL: "pop" }], ["treatment", 3, { MODEL: "pop" }]]);
  assert.match(issues("experiment: exp\nmodel: 1\n" + base.slice("experiment: exp\n".length)).join(), /^model: unknown key$/m, "other unknown keys are still refused");
});

test("a variable used without a default that is not set is warned about once; not in comments, not for tokens", () => {
  const text =
    "experiment: e-${UNSET_A}\nengine: static\n# a comment: ${UNSET_COMMENT}\nadmin: { token: '${UNSET_TOKEN}', ingestToken: ${UNSET_INGEST} }\n" +
    "variants:\n  - { name: control, url: 'http://127.0.0.1:9001', weight: ${SET_B} }\n  - { name: t${UNSET_A}, url: '${U:-http://127.0.0.1:9002}' }\n" +
    "metrics: [{ name: m, kind: conversion, event: $${UNSET_D}x${EMPTY_E} }]\n";
  const warned: string[] = [];
  parseConfig(text, "/tmp", { SET_B: "1", EMPTY_E: "" }, (name) => warned.push(name));
  assert.deepEqual(warned, ["UNSET_A"]);
  // A token written under an x- anchor is a token where it lands (a merge key, an alias); a variable that also lands
  // elsewhere is warned about, and so is one that lands nowhere (an anchor never used), as before.
  const variants = "variants:\n  - { name: control, url: 'http://127.0.0.1:9001' }\n  - { name: t, url: 'http://127.0.0.1:9002' }\n";
  const merged: string[] = [];
  parseConfig(
    "x-secrets: &secrets { token: '${UNSET_T1}', ingestToken: ${BOTH} }\nx-unused: ${UNSET_X}\nexperiment: e${BOTH}\nengine: static\n" +
      "admin: { <<: *secrets, listen: '127.0.0.1:9100' }\n" + variants,
    "/tmp", {}, (name) => merged.push(name),
  );
  assert.deepEqual(merged.sort(), ["BOTH", "UNSET_X"]);
  const aliased: string[] = [];
  parseConfig("x-t: &t ${UNSET_T3}\nexperiment: e\nengine: static\nadmin: { token: *t }\n" + variants, "/tmp", {}, (name) => aliased.push(name));
  assert.deepEqual(aliased, []);
  // used in a token and in a mapping key: the key is no token
  const keyed: string[] = [];
  parseConfig(
    "experiment: e\nengine: process\nadmin: { token: '${T}' }\nvariants:\n" +
      "  - { name: control, command: [node, a.js], env: { '${T}_X': '1' } }\n  - { name: t, command: [node, b.js] }\n",
    "/tmp", {}, (name) => keyed.push(name),
  );
  assert.deepEqual(keyed, ["T"]);
});

test("values that would misbehave at run time are refused by name: long timers, header and cookie names, health paths, env, tokens, store and url", () => {
  const one = (text: string, env: NodeJS.ProcessEnv = {}) => issues(text, env).join("\n");
  // Node turns a timer past 2^31 - 1 ms into 1 ms.
  assert.match(one(base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', health: { intervalMs: 3000000000 }")), /^variants\[0\]\.health\.intervalMs: at most 2147483647 ms/);
  assert.match(one(`${base}limits: { ejectionMs: 3000000000 }\n`), /^limits\.ejectionMs: at most 2147483647/);
  assert.match(one(`${base}strategy: { kind: bandit, updateIntervalMs: 3000000000 }\nmetrics: [{ name: w, kind: conversion, event: w }]\n`), /^strategy\.updateIntervalMs: at most/);
  assert.doesNotThrow(() => parseConfig(`${base}limits: { ejectionMs: 2147483647 }\n`, "/tmp", {}));
  assert.match(one(`${base}limits: { ejectionMs: 5000, maxEjectionMs: 4000 }\n`), /^limits\.maxEjectionMs: at least limits\.ejectionMs \(5000\)/);
  assert.equal(parseConfig(`${base}limits: { ejectionMs: 5000, maxEjectionMs: 5000 }\n`, "/tmp", {}).limits.maxEjectionMs, 5000);
  // A cookie or header name that is not a token forges header lines, or is never sent back.
  assert.match(one(`${base}unit: { cookie: "a;b=c" }\n`), /^unit\.cookie: a cookie name:/);
  assert.match(one(`${base}unit: { cookie: "x\\r\\nSet-Cookie: evil=1" }\n`), /^unit\.cookie: a cookie name:/);
  assert.match(one(`${base}unit: { header: "x user" }\n`), /^unit\.header: a header name:/);
  assert.match(one(base.replace("url: 'http://127.0.0.1:9001'", "url: 'http://127.0.0.1:9001', health: { path: '/he alth' }")), /^variants\[0\]\.health\.path: a path starting with \//);
  assert.match(one(base.replace("url: 'http://127.0.0.1:9001'", 'url: \'http://127.0.0.1:9001\', health: { path: "/h\\r\\nX-Evil: 1" }')), /^variants\[0\]\.health\.path:/);
  // env: a name with '=' sets another variable; NUL cannot be passed; PORT is abgate's.
  assert.match(one(processBase.replace("command: [node, a.js]", 'command: [node, a.js], env: { "A=B": x }')), /^variants\[0\]\.env\.A=B: an environment variable name/);
  assert.match(one(processBase.replace("command: [node, a.js]", 'command: [node, a.js], env: { "": x }')), /^variants\[0\]\.env\.: an environment variable name/);
  assert.match(one(processBase.replace("command: [node, a.js]", 'command: [node, a.js], env: { A: "x\\0y" }')), /^variants\[0\]\.env\.A: a value without NUL/);
  assert.match(one(processBase.replace("command: [node, a.js]", "command: [node, a.js], env: { PORT: '9000' }")), /^variants\[0\]\.env\.PORT: not set here/);
  // A token a client cannot send: a space inside it, non-ASCII.
  assert.match(one(`${base}admin: { token: \${T} }\n`, { T: "sec ret" }), /^admin\.token: visible ASCII characters only/);
  assert.equal(parseConfig(`${base}admin: { token: \${T} }\n`, "/tmp", { T: "secret \n" }).admin.token, "secret", "a secret file's newline is dropped");
  assert.match(one(`${base}admin: { ingestToken: "tökén" }\n`), /^admin\.ingestToken: visible ASCII/);
  assert.doesNotMatch(one(`${base}admin: { token: \${T} }\n`, { T: "sec ret" }), /sec/, "the message does not show the token");
  assert.match(one(`${base}store: "postgresql://u:p@[::1:5432/db"\n`), /^store: postgres:\/\/user:password@host:port\/database, a valid URL/);
  assert.match(one(`${base}store: "postgres://u@127.0.0.1:99999/db"\n`), /^store: postgres:\/\//);
  assert.match(one(base.replace("http://127.0.0.1:9001", "http://user:pw@127.0.0.1:9001")), /^variants\[0\]\.url: an origin without user or password/);
  // Two names that mean something else, and a bandit floor that makes it an equal split.
  assert.match(one(base.replace("name: treatment", "name: reject")), /^variants\[1\]\.name: a name other than "reject"/);
  assert.match(one(`${base}strategy: { kind: bandit, floor: 0.5 }\nmetrics: [{ name: w, kind: conversion, event: w }]\n`.replace("variants:\n", "variants:\n  - { name: third, url: 'http://127.0.0.1:9003' }\n")), /^strategy\.floor: at most 1\/3 with 3 variants/);
});

test("${...} forms: compose's defaults and required variables work; others are refused, never kept as literal text", () => {
  const salt = (ref: string, env: NodeJS.ProcessEnv) => parseConfig(`${base}strategy: { salt: "${ref}" }\n`, "/tmp", env).strategy.salt;
  assert.equal(salt("${S-dflt}", {}), "dflt");
  assert.equal(salt("${S-dflt}", { S: "" }), "", "'-' only when unset");
  assert.equal(salt("${S:-dflt}", { S: "" }), "dflt");
  assert.equal(salt("${S:?needed}", { S: "x" }), "x");
  assert.deepEqual(issues(`${base}admin: { token: "\${ABGATE_T:?set it to the admin token}" }\n`, {}), ["line 6 (token): ${ABGATE_T} is not set: set it to the admin token"]);
  assert.deepEqual(issues(`${base}admin: { token: "\${ABGATE_T:?}" }\n`, { ABGATE_T: "" }), ["line 6 (token): ${ABGATE_T} is empty (it must be)"]);
  assert.deepEqual(issues(`${base}admin: { token: "\${ABGATE_T?}" }\n`, {}), ["line 6 (token): ${ABGATE_T} is not set (it must be)"]);
  assert.doesNotThrow(() => parseConfig(`${base}admin: { token: "\${ABGATE_T?}" }\n`, "/tmp", { ABGATE_T: "" }));
  // in a comment a reference is not used: nothing is required
  assert.doesNotThrow(() => parseConfig(`${base}# token: \${ABGATE_T:?must be set}\n`, "/tmp", {}));
  for (const form of ["${A:-${B}}", "${A:+x}", "${not a name}", "${}", "x${"]) {
    const found = issues(`${base}strategy: { salt: "${form}" }\n`, { A: "a", B: "b" });
    assert.equal(found.length, 1, form);
    assert.match(found[0]!, /^line 6: "\$\{.*is not a reference abgate expands/, form);
  }
  assert.equal(salt("$${A:+x}", {}), "${A:+x}", "escaped: literal");
  // An escape without its }: literal text as it was, and the flow map around it still parses.
  const open = parseConfig(processBase.replace("command: [node, a.js]", () => 'command: [node, a.js], env: { A: "$${X", B: y }'), "/tmp", {});
  assert.deepEqual(open.variants[0]!.env, { A: "$${X", B: "y" });
  // The message shows the reference's start, not the rest of the value: a token written into the file.
  const leaked = issues(`${base}admin: { token: 'Zq8\${!secretsecret' }\n`).join();
  assert.match(leaked, /"\$\{"\.\.\. is not a reference/);
  assert.doesNotMatch(leaked, /secret/);
});

test("an unbraced $NAME is refused as a token or salt (it was used as that public text), and kept in a command", () => {
  const env = { MYTOK: "realtoken-1234567890" };
  assert.deepEqual(issues(`${base}admin: { token: $MYTOK, ingestToken: "$ING" }\n`, env), [
    'admin.token: "$MYTOK" is not expanded (abgate reads only ${...} forms): write ${MYTOK} to read the variable',
    'admin.ingestToken: "$ING" is not expanded (abgate reads only ${...} forms): write ${ING} to read the variable',
  ]);
  assert.deepEqual(issues(`${base}strategy: { salt: $SALT }\n`, {}), ['strategy.salt: "$SALT" is not expanded (abgate reads only ${...} forms): write ${SALT} to read the variable']);
  assert.equal(parseConfig(`${base}admin: { token: \${MYTOK} }\n`, "/tmp", env).admin.token, "realtoken-1234567890");
  // a token that only contains a $ is a token
  assert.equal(parseConfig(`${base}admin: { token: "a$MYTOK" }\n`, "/tmp", env).admin.token, "a$MYTOK");
  // a command's $PORT is the shell's, at the replica's start
  const shell = parseConfig(processBase.replace("command: [node, a.js]", () => "command: [sh, -c, 'exec node a.js --port $PORT']"), "/tmp", {});
  assert.deepEqual(shell.variants[0]!.command, ["sh", "-c", "exec node a.js --port $PORT"]);
});

test("duplicate keys are named with their line, in block and flow mappings; a big file is parsed in linear time", () => {
  assert.deepEqual(issues(base.replace("url: 'http://127.0.0.1:9002' }", "url: 'http://127.0.0.1:9002', url: 'http://127.0.0.1:9003' }")), ['line 5: duplicate key "url" (a key may appear once in a mapping)']);
  // Keys are compared as they expand.
  const withEnvKeys = (env: NodeJS.ProcessEnv) => processBase.replace("command: [node, a.js]", "command: [node, a.js], env: { ${K1}: x, ${K2}: y }") + `# ${JSON.stringify(env)}\n`;
  assert.deepEqual(parseConfig(withEnvKeys({}), "/tmp", { K1: "A", K2: "B" }).variants[0]!.env, { A: "x", B: "y" });
  assert.deepEqual(issues(withEnvKeys({}), { K1: "A", K2: "A" }), ['line 4: duplicate key "A" (a key may appear once in a mapping)']);
  assert.deepEqual(parseConfig(processBase.replace("command: [node, a.js]", () => "command: [node, a.js], env: { $${A}: x, $${B}: y }"), "/tmp", {}).variants[0]!.env, { "${A}": "x", "${B}": "y" });
  const keys = Array.from({ length: 40_000 }, (_, i) => `x-k${i}: ${i}`).join("\n");
  const t0 = performance.now();
  parseConfig(`${base}${keys}\n`, "/tmp", {});
  const ms = performance.now() - t0;
  assert.ok(ms < 3_000, `40,000 keys took ${ms.toFixed(0)} ms`);
});

test("a config file past 1 MiB, or an endless one, is refused without reading it all", async () => {
  const { loadConfig, MAX_CONFIG_BYTES } = await import("./load.ts");
  const dir = mkdtempSync(join(tmpdir(), "abgate-cfg-"));
  const big = join(dir, "big.yaml");
  writeFileSync(big, base + `# ${"x".repeat(MAX_CONFIG_BYTES)}\n`);
  assert.throws(() => loadConfig(big), (err: unknown) => err instanceof ConfigError && /larger than 1 MiB: is it the config\?/.test(err.message));
  assert.throws(() => loadConfig("/dev/zero"), (err: unknown) => err instanceof ConfigError && /larger than 1 MiB/.test(err.message));
});

test("YAML problems say which: an alias without anchor, one document only, nesting too deep", () => {
  assert.deepEqual(issues(`${base}logLevel: *nope\n`), [": the YAML cannot be read: Unresolved alias (the anchor must be set before the alias): nope"]);
  assert.deepEqual(issues(`${base}---\nfoo: 1\n`), ["line 6: a config is one YAML document: this is the start of a second one (---)"]);
  assert.deepEqual(issues(`${base}x-deep: ${"[".repeat(5000)}${"]".repeat(5000)}\n`), ["line 6: the YAML is nested too deeply"]);
});

test("env and buildArgs values may be written as numbers or booleans, as docker compose takes them", () => {
  const c = parseConfig(processBase.replace("command: [node, a.js]", "command: [node, a.js], env: { WORKERS: 4, DEBUG: true, RATIO: 0.5 }"), "/tmp", {});
  assert.deepEqual(c.variants[0]!.env, { WORKERS: "4", DEBUG: "true", RATIO: "0.5" });
  assert.match(issues(processBase.replace("command: [node, a.js]", "command: [node, a.js], env: { A: [1] }")).join(), /^variants\[0\]\.env\.A:/);
});

test("a __proto__ key is refused by its path, not taken as the object's prototype (whose keys passed as inherited)", () => {
  const said = "unknown key (and no name abgate can take, in env or buildArgs either)";
  assert.deepEqual(issues(base.replace("experiment: exp\n", "__proto__: { experiment: qa }\n")), [`__proto__: ${said}`]);
  assert.deepEqual(issues(base.replace("name: control,", "name: control, __proto__: { weight: 5 },")), [`variants[0].__proto__: ${said}`]);
  assert.deepEqual(issues(processBase.replace("command: [node, b.js]", "command: [node, b.js], env: { __proto__: x }")), [`variants[1].env.__proto__: ${said}`]);
});

test("a static replica at abgate's own listen or admin address is refused: its requests would loop through abgate", () => {
  assert.deepEqual(issues(`${base}listen: 127.0.0.1:9002\n`), [
    "variants[1].url: an endpoint other than abgate's own listen (127.0.0.1:9002): requests sent there would come back to abgate",
  ]);
  // other spellings of the same listener: localhost, a wildcard listen, the admin listener, a urls entry
  assert.match(issues(base.replace("http://127.0.0.1:9001", "http://localhost:8080") + "listen: 0.0.0.0:8080\n").join(), /^variants\[0\]\.url: an endpoint other than abgate's own listen \(0\.0\.0\.0:8080\)/);
  assert.match(issues(base.replace("http://127.0.0.1:9001", "http://127.0.0.1:8081") + "admin: { listen: 127.0.0.1:8081 }\n").join(), /^variants\[0\]\.url: an endpoint other than abgate's own admin\.listen/);
  assert.match(issues(base.replace("url: 'http://127.0.0.1:9001'", "urls: ['http://127.0.0.1:9003', 'http://[::1]:8080']") + "listen: '[::]:8080'\n").join(), /^variants\[0\]\.urls\[1\]: an endpoint other than abgate's own listen/);
  // another address on the same port is another listener; port 0 is never a clash
  assert.doesNotThrow(() => parseConfig(`${base}listen: 127.0.0.2:9002\n`, "/tmp", {}));
  assert.doesNotThrow(() => parseConfig(`${base}listen: 127.0.0.1:0\n`, "/tmp", {}));
});

test("a strategy key the chosen strategy does not read is refused, naming the strategies it is for", () => {
  assert.deepEqual(issues(`${base}strategy: { kind: sticky, floor: 0.1, burnInUnits: 5 }\n`), [
    "strategy.floor: not used by strategy sticky (it is for bandit)",
    "strategy.burnInUnits: not used by strategy sticky (it is for bandit)",
  ]);
  assert.deepEqual(issues(`${base}strategy: { kind: round-robin, salt: s }\n`), ["strategy.salt: not used by strategy round-robin (it is for sticky and bandit)"]);
  assert.doesNotThrow(() => parseConfig(`${base}strategy: { kind: sticky, salt: s, hash: fnv1a32-fmix }\n`, "/tmp", {}));
});

test("names are at most 63 characters (a DNS label): experiment, variants, metrics", () => {
  const long = "a".repeat(64);
  const fits = "b".repeat(63);
  assert.deepEqual(
    issues(`experiment: ${long}\nengine: static\nvariants:\n  - { name: ${long}, url: 'http://127.0.0.1:1' }\n  - { name: ${fits}, url: 'http://127.0.0.1:2' }\nmetrics:\n  - { name: ${long}, kind: latency }\n`),
    ["experiment: at most 63 characters", "variants[0].name: at most 63 characters", "metrics[0].name: at most 63 characters"],
  );
});

test("build keys beside an image are refused: an image is run as it is", () => {
  assert.deepEqual(
    issues("experiment: exp\nengine: docker\nvariants:\n  - { name: control, image: 'm:1', buildArgs: { A: b }, dockerfile: D }\n"),
    ["variants[0].buildArgs: only with build: an image is run as it is, not built", "variants[0].dockerfile: only with build: an image is run as it is, not built"],
  );
});

test("event names without control or bidirectional-formatting characters (the notes quote them)", () => {
  const metric = (event: string) => `${base}metrics:\n  - { name: m, kind: conversion, event: ${JSON.stringify(event)} }\n`;
  assert.deepEqual(issues(metric("watched\u202Eevil")), ["metrics[0].event: an event name without control or bidirectional-formatting characters"]);
  assert.deepEqual(issues(metric("a\tb")), ["metrics[0].event: an event name without control or bidirectional-formatting characters"]);
  assert.doesNotThrow(() => parseConfig(metric("vidéo vue · 視聴"), "/tmp", process.env));
});

test("names and addresses Docker or the network would refuse later are refused by validate", () => {
  const problems = (text: string) => {
    try {
      parseConfig(text, "/tmp", {});
      return [];
    } catch {
      return issues(text, {});
    }
  };
  const built = (experiment: string, variant: string, engine = "docker") =>
    problems(`experiment: ${experiment}\nengine: ${engine}\nvariants:\n  - { name: ${variant}, build: ./m }\n`);
  for (const variant of ["knn-", "v2_", "a___b", "a_-b"]) {
    assert.deepEqual(built("exp", variant), [`variants[0].name: a name Docker can use in the image abgate builds (abgate/exp-${variant}): end it with a letter or digit, with at most two '_' in a row and none next to '-'`], variant);
  }
  for (const variant of ["knn", "v2_b", "a__b", "a--b", "a_b"]) assert.deepEqual(built("exp", variant), [], variant);
  // an image given is run as it is: its name is not made from the variant's
  assert.deepEqual(problems("experiment: exp\nengine: docker\nvariants:\n  - { name: v2_, image: 'm:1' }\n"), []);
  // swarm: the service of the last replica, abgate-<experiment>-<variant>-<replica>, at most 63 characters
  const experiment = "recommender-v2-holiday-campaign";
  assert.deepEqual(built(experiment, "collaborative-filtering-v3", "swarm"), [
    `variants[0].name: a shorter name: with experiment ${experiment} the swarm service of its replicas (abgate-${experiment}-collaborative-filtering-v3-0) has 67 characters, and Docker takes at most 63`,
  ]);
  assert.deepEqual(built(experiment, "cf-v3", "swarm"), []);
  assert.deepEqual(issues(base.replace("http://127.0.0.1:9001", "http://127.0.0.1:0")), ['variants[0].url: a port from 1 to 65535 (got "http://127.0.0.1:0": port 0 cannot be connected to)']);
  assert.deepEqual(issues(`${base}listen: "999.1.1.1:8080"\n`), ["listen: host:port with an IPv4 address of four numbers from 0 to 255 (got 999.1.1.1:8080)"]);
  assert.deepEqual(problems(`${base}listen: "localhost:8080"\n`), []);
});
