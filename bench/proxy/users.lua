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
