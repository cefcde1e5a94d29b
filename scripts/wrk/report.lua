-- Shared by the wrk scripts (enroll.lua, identify.lua), loaded with dofile from the repository
-- root: every thread gets an id ("tid") and is remembered; at the end one JSON line on stdout:
-- requests, the answers each script counted as "created" (its expected status) and "other",
-- socket errors, duration and latency percentiles (all requests, microseconds).

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    o = o + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"created":%d,"other_status":%d,"socket_errors":%d,"duration_us":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, c, o, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max))
end
