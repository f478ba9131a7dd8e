-- One request shape for every scenario, configured from the environment by bench/run.py:
--   WRK_METHOD (GET/PUT/POST), WRK_BODY (raw body or empty), WRK_HEADERS ("Name: value" lines).
-- done() prints one JSON line that the runner parses (latencies in microseconds).

local method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY") or ""
local headers = {}
for line in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then headers[name] = value end
end
if body ~= "" and headers["Content-Type"] == nil then headers["Content-Type"] = "application/json" end

local req
init = function(args)
  req = wrk.format(method, nil, headers, body ~= "" and body or nil)
end

request = function()
  return req
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
