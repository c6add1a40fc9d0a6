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
-- one-day window, counts up to ~10^8). Only then count this request in every
-- current counter (TTL 2 W + 1 s, set when the counter is created); rejected
-- requests do not count. Time is the server's (TIME), so the replicas'
-- clocks do not matter.
--
-- Returns one bulk string of decimal fields separated by single spaces:
--
--   "<allowed 1|0> <unix_s> <micros> <cur_1> <prev_1> <cur_2> <prev_2> ..."
--
-- <unix_s> <micros> are TIME's reply as it came; the counters are as they
-- were BEFORE this request. The caller derives remaining, reset and
-- retry-after from them with the same math.
--
-- Cost (this runs once per allowed request, on Redis's one thread): three
-- kinds of redis.call, TIME, ONE MGET of every window's current and previous
-- counter, and one INCR per window (a SET .. EX instead when the counter is
-- new, so no separate EXPIRE). The reply is a string rather than an array
-- because Redis converts a Lua table to a reply field by field, and because
-- a flat string is cheaper for the client to parse; its fields are strings
-- Redis handed us (TIME, MGET), concatenated, because formatting a Lua
-- number as text costs more than the rest of the reply together.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local n = #KEYS
local names = {}
for i = 1, n do
  local w = ARGV[2 * i - 1] + 0
  local bucket = (now - now % w) / w
  names[2 * i - 1] = KEYS[i] .. ':' .. string.format('%d', bucket)
  names[2 * i] = KEYS[i] .. ':' .. string.format('%d', bucket - 1)
end
local v = redis.call('MGET', unpack(names))
local allowed = '1'
local reply = t[1] .. ' ' .. t[2]
for i = 1, n do
  local w = ARGV[2 * i - 1] + 0
  local cur_s, prev_s = v[2 * i - 1] or '0', v[2 * i] or '0'
  local cur, prev = tonumber(cur_s), tonumber(prev_s)
  if not cur or not prev then
    return redis.error_reply('ERR keyward rate limit: a counter of ' .. KEYS[i] .. ' is not a number')
  end
  if prev * (w - now % w) + (cur + 1) * w > ARGV[2 * i] * w then
    allowed = '0'
  end
  reply = reply .. ' ' .. cur_s .. ' ' .. prev_s
end
if allowed == '1' then
  for i = 1, n do
    if v[2 * i - 1] then
      redis.call('INCR', names[2 * i - 1])
    else
      redis.call('SET', names[2 * i - 1], 1, 'EX', 2 * math.floor(ARGV[2 * i - 1] / 1000) + 1)
    end
  end
end
return allowed .. ' ' .. reply
