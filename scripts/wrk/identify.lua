-- wrk script for scripts/cluster-bench.sh: POST /v1/identify with the same body every request.
--
-- Environment: IDENTIFY_BODY  file holding the whole JSON request body.
-- At the end it prints one JSON line on stdout: requests, 200 answers, other statuses, socket
-- errors, duration and latency percentiles (microseconds).

local f = assert(io.open(os.getenv("IDENTIFY_BODY") or error("IDENTIFY_BODY is not set"), "r"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
local threads = {}
local headers = { ["Content-Type"] = "application/json" }

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  other = 0
end

function request()
  return wrk.format("POST", "/v1/identify", headers, body)
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("ok")
    o = o + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"created":%d,"other_status":%d,"socket_errors":%d,"duration_us":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, c, o, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max))
end
