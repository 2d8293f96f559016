-- report.lua: wrk's done() hook; prints one machine-readable JSON line, prefixed BENCH_JSON.
-- Latencies are wrk's own (microseconds, client side). HTTP errors are wrk's
-- summary.errors.status (responses with status >= 400), so no response() hook slows wrk.

local percentiles = { 1, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.9, 99.95, 99.99, 99.999 }

local function num(x)
  -- JSON has no NaN or infinity; an empty histogram gives them.
  if x ~= x or x == math.huge or x == -math.huge then
    return "null"
  end
  return string.format("%.1f", x)
end

function done(summary, latency, requests)
  local e = summary.errors
  local ps = {}
  for _, p in ipairs(percentiles) do
    ps[#ps + 1] = string.format("[%.10g,%s]", p, num(latency:percentile(p)))
  end
  local lines = {
    string.format('"duration_us":%s', num(summary.duration)),
    string.format('"requests":%s', num(summary.requests)),
    string.format('"bytes":%s', num(summary.bytes)),
    string.format(
      '"errors":{"connect":%s,"read":%s,"write":%s,"status":%s,"timeout":%s}',
      num(e.connect), num(e.read), num(e.write), num(e.status), num(e.timeout)
    ),
    string.format(
      '"latency_us":{"min":%s,"mean":%s,"stdev":%s,"max":%s,"percentiles":[%s]}',
      num(latency.min), num(latency.mean), num(latency.stdev), num(latency.max),
      table.concat(ps, ",")
    ),
    string.format(
      '"thread_rps":{"mean":%s,"stdev":%s,"max":%s}',
      num(requests.mean), num(requests.stdev), num(requests.max)
    ),
  }
  io.write("BENCH_JSON {" .. table.concat(lines, ",") .. "}\n")
end
