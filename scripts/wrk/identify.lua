-- wrk script for scripts/cluster-bench.sh: POST /v1/identify with the same body every request.
--
-- Environment: IDENTIFY_BODY  file holding the whole JSON request body.
-- At the end (scripts/wrk/report.lua) one JSON line: "created" counts the 200 answers.

local f = assert(io.open(os.getenv("IDENTIFY_BODY") or error("IDENTIFY_BODY is not set"), "r"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
local headers = { ["Content-Type"] = "application/json" }
dofile("scripts/wrk/report.lua")

function init(args)
  created = 0
  other = 0
end

function request()
  return wrk.format("POST", "/v1/identify", headers, body)
end

function response(status, headers, body)
  if status == 200 then created = created + 1 else other = other + 1 end
end
