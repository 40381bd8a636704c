//! The Lua scripts the fleet runs in Redis. Each runs atomically on the
//! server; the limits read the server's clock (`TIME`), so the instances'
//! clocks never matter. Every key a script touches shares one hash tag
//! (see `keys`), so each works on Redis Cluster too.

/// Cooldown check, then GCRA over every limit that applies to a request,
/// all or nothing.
///
/// `KEYS[1]`: the route's cooldown key (checked when `ARGV[1]` is `1`);
/// `KEYS[2..]`: one key per limit, each with two arguments after `ARGV[1]`:
/// the emission interval `T` (microseconds per request, `1e6 / rate`) and
/// the tolerance (`burst * T`). A key holds the limit's theoretical arrival
/// time (TAT) in microseconds of the server's clock and expires when it
/// would be back at a full burst.
///
/// Returns `{-1, 0}` allowed (every TAT advanced), `{0, ms}` in cooldown for
/// `ms` more, or `{i, ms}`: limit `i` (1-based) refuses for `ms` more (no TAT
/// advanced: a refused request costs nothing).
pub const LIMIT: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
if ARGV[1] == '1' then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return {0, left} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i = 2, #KEYS do
  local interval = tonumber(ARGV[2 * i - 2])
  local tolerance = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local new = tat + interval
  if new - now > tolerance then
    return {i - 1, math.ceil((new - tolerance - now) / 1000)}
  end
  tats[i] = new
end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return {-1, 0}
";

/// Claim a key unless it is taken: `KEYS[1]`, value `ARGV[1]`, expiring
/// after `ARGV[2]` ms. Returns `ok`, or the value that holds it.
pub const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'ok'
";

/// Settle a claim made with value `ARGV[1]`. `ARGV[2]` empty: release it
/// (only if it is still ours). Otherwise set it to `ARGV[2]` for `ARGV[3]`
/// ms if it is still ours or gone (expired); a key another claim holds now
/// is left alone. Returns 1 when the key was changed.
pub const SETTLE: &str = r"
local v = redis.call('GET', KEYS[1])
if ARGV[2] == '' then
  if v == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
  return 0
end
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Start (or lengthen, never shorten) a cooldown: `KEYS[1]` for `ARGV[1]` ms.
pub const COOLDOWN: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return 1
end
return 0
";

/// The route switches' last-writer-wins write: set the route's field of the
/// switches hash unless the value there supersedes the new one; answer the
/// value in force afterwards.
///
/// `KEYS[1]`: the hash; `ARGV[1]`: the route (the field); `ARGV[2]`: the new
/// value (JSON); `ARGV[3]`: its `at_ms`; `ARGV[4]`: `1` for a disable, `0`
/// for an enable. A value supersedes another when its `at_ms` is later, or
/// equal with a disable against an enable (a tie never turns a route on).
/// A value there that does not parse is replaced.
pub const SWITCH: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old.at_ms) then
    local o, n = tonumber(old.at_ms), tonumber(ARGV[3])
    local old_off, new_off = old.disabled == true, ARGV[4] == '1'
    if o > n or (o == n and (old_off or not new_off)) then
      return cur
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
";
