-- wrk script for bench/soak.sh: cycles through SOAK_REQS, one request per
-- line, "<path>\t<Authorization value or empty>", so one run mixes valid,
-- unknown, revoked, over-limit and anonymous requests.
local file = os.getenv("SOAK_REQS")
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
local reqs, n, i = {}, 0, 0

function init(args)
    for line in io.lines(file) do
        local path, auth = line:match("^([^\t]*)\t?(.*)$")
        local headers = {}
        if auth and #auth > 0 then headers["Authorization"] = auth end
        reqs[#reqs + 1] = wrk.format("GET", path, headers)
    end
    n = #reqs
end

function request()
    i = i + 1
    if i > n then i = 1 end
    return reqs[i]
end

if delay_ms > 0 then
    -- pacing: each connection waits this long after each response
    function delay() return delay_ms end
end

function done(summary, latency, requests)
    local codes = {}
    io.write(string.format("SOAKDONE requests=%d errors_connect=%d errors_read=%d errors_timeout=%d non2xx=%d\n",
        summary.requests, summary.errors.connect, summary.errors.read, summary.errors.timeout,
        summary.errors.status))
end
