-- wrk script: GET KW_PATH with `Authorization: Bearer <key>`, cycling through
-- every key of KW_KEYS_FILE once per pass in a shuffled order (thread-local).
-- KW_DELAY_MS > 0 paces each connection (exponential think time with that
-- mean after each response, as the side-by-side harness's latency run does).
local keys_file = os.getenv("KW_KEYS_FILE")
local path = os.getenv("KW_PATH") or "/v1/jobs/42"
local delay_ms = tonumber(os.getenv("KW_DELAY_MS") or "0")
local reqs, n, i = {}, 0, 0

function init(args)
    local keys = {}
    for line in io.lines(keys_file) do
        if #line > 0 then keys[#keys + 1] = line end
    end
    math.randomseed(os.time())
    for j = #keys, 2, -1 do
        local k = math.random(j)
        keys[j], keys[k] = keys[k], keys[j]
    end
    for j = 1, #keys do
        reqs[j] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. keys[j] })
    end
    n = #reqs
end

function request()
    i = i + 1
    if i > n then i = 1 end
    return reqs[i]
end

if delay_ms > 0 then
    local log, random, floor = math.log, math.random, math.floor
    function delay()
        local d = floor(-delay_ms * log(1 - random()) + 0.5)
        if d > 10 * delay_ms then d = 10 * delay_ms end
        return d
    end
end

function done(summary, latency, requests)
    local s = summary.status_codes or {}
    local non2xx = summary.errors.status or 0
    io.write(string.format("KWRSS requests=%d non2xx=%d p50_us=%d p99_us=%d max_us=%d\n",
        summary.requests, non2xx, latency:percentile(50), latency:percentile(99), latency.max))
end
