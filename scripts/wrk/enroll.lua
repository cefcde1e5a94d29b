-- wrk script for scripts/ingest-bench.sh: POST /v1/subjects with a new subject every request.
--
-- Environment:
--   INGEST_SAMPLES  file holding the JSON members after "subject_id" (e.g. `"face":{...}` or
--                   `"face":{...},"fingers":[...]`), the same for every request
--   INGEST_PREFIX   subject id prefix, unique per run (ids: PREFIX-t<thread>-<counter>)
--
-- Subject ids are unique (thread id + per-thread counter), so every answer should be 201. At the
-- end it prints one JSON line on stdout: requests, 201 answers, other statuses, socket errors,
-- duration and latency percentiles (all requests, microseconds).

local samples_path = os.getenv("INGEST_SAMPLES") or error("INGEST_SAMPLES is not set")
local f = assert(io.open(samples_path, "r"))
local samples = f:read("*a"):gsub("%s+$", "")
f:close()
local prefix = os.getenv("INGEST_PREFIX") or "ING"

dofile("scripts/wrk/report.lua")

function init(args)
  counter = 0
  created = 0
  other = 0
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  counter = counter + 1
  local body = string.format('{"subject_id":"%s-t%d-%d",%s}', prefix, tid, counter, samples)
  return wrk.format("POST", "/v1/subjects", headers, body)
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
  else
    other = other + 1
  end
end
