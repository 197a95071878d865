-- wrk script: rotate over prepared requests, one per line of the file named by the first
-- script argument: METHOD <tab> PATH <tab> BEARER TOKEN (or empty) <tab> JSON BODY (or empty).
-- Prints one machine-readable summary line at the end.

local created = 0

function setup(thread)
  thread:set("thread_id", created)
  created = created + 1
end

local prepared = {}
local index = 0

function init(args)
  for line in io.lines(args[1]) do
    local method, path, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    if token ~= "" then headers["Authorization"] = "Bearer " .. token end
    if body ~= "" then
      headers["Content-Type"] = "application/json"
    else
      body = nil
    end
    prepared[#prepared + 1] = wrk.format(method, path, headers, body)
  end
  index = (thread_id or 0) * 7919
end

function request()
  index = index + 1
  return prepared[(index % #prepared) + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
