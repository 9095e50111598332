-- wrk script: every request carries an x-user-id drawn at random from a pool of users, so that a sticky
-- proxy hashes a realistic spread of units instead of one. Requests are formatted once up front (formatting
-- per request in Lua would make wrk, not the proxy, the bottleneck).
local poolSize = tonumber(os.getenv("BENCH_USERS") or "10000")
local requests = {}

init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  for i = 1, poolSize do
    requests[i] = wrk.format("GET", "/", { ["Host"] = "bench", ["x-user-id"] = "user-" .. i })
  end
end

request = function()
  return requests[math.random(poolSize)]
end

-- BENCH_DELAY_MS: each connection waits this long (whole ms, wrk's resolution) after a response before its next
-- request, so the load is a rate the proxies all keep up with instead of as much as one can take
-- (bench/proxy/latency.sh). Unset, the load is the usual closed loop.
local delayMs = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delayMs then
  delay = function()
    return delayMs
  end
end

-- One more line for the driver: wrk's --latency table stops at 99%.
done = function(summary, latency, requests)
  io.write(string.format("p99.9 %dus\n", latency:percentile(99.9)))
end
