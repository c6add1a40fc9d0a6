-- keyward rate limit: one sliding-window-counter decision for every window
-- of a plan, atomically (SPEC §5). Embedded by src/ratelimit/redis.rs, which
-- documents the contract; src/ratelimit/window.rs holds the same math.
--
--   KEYS[i]      counter base of window i: {p}rl:{<subject>}:<plan>:<window_s>
--                (the counters are <base>:<bucket>, bucket = floor(now / window))
--   ARGV[2i-1]   window i's length in milliseconds
--   ARGV[2i]     window i's max
--
-- Admit iff for EVERY window  prev * (W - e) + (cur + 1) * W <= max * W,
-- i.e. estimate + 1 <= max with estimate = cur + prev * (1 - e / W), in
-- integer milliseconds (exact in Lua's doubles while prev * W < 2^53: for a
-- one-day window, counts up to ~10^8). Only then INCR every current counter
-- (TTL 2 W + 1 s); rejected requests do not count. Time is the server's
-- (TIME), so the replicas' clocks do not matter.
--
-- Returns {allowed (1|0), now_ms, cur_1, prev_1, cur_2, prev_2, ...}: the
-- counters as they were BEFORE this request, from which the caller derives
-- remaining, reset and retry-after with the same math.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local out = {0, now}
local current_keys = {}
local allowed = 1
for i = 1, n do
  local w = tonumber(ARGV[2 * i - 1])
  local max = tonumber(ARGV[2 * i])
  local bucket = math.floor(now / w)
  local current_key = KEYS[i] .. ':' .. string.format('%d', bucket)
  local v = redis.call('MGET', current_key, KEYS[i] .. ':' .. string.format('%d', bucket - 1))
  local cur = tonumber(v[1]) or 0
  local prev = tonumber(v[2]) or 0
  local e = now - bucket * w
  if prev * (w - e) + (cur + 1) * w > max * w then
    allowed = 0
  end
  current_keys[i] = current_key
  out[2 * i + 1] = cur
  out[2 * i + 2] = prev
end
if allowed == 1 then
  for i = 1, n do
    if redis.call('INCR', current_keys[i]) == 1 then
      redis.call('EXPIRE', current_keys[i], 2 * math.floor(tonumber(ARGV[2 * i - 1]) / 1000) + 1)
    end
  end
end
out[1] = allowed
return out
