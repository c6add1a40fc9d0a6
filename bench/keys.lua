-- wrk script: GET KW_PATH with `Authorization: Bearer <key>`, cycling through
-- every key of KW_KEYS_FILE once per pass in a shuffled order (thread-local).
local keys_file = os.getenv("KW_KEYS_FILE")
local path = os.getenv("KW_PATH") or "/v1/jobs/42"
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

function done(summary, latency, requests)
    local s = summary.status_codes or {}
    local non2xx = summary.errors.status or 0
    io.write(string.format("KWRSS requests=%d non2xx=%d\n", summary.requests, non2xx))
end
