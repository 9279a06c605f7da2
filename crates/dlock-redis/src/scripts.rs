//! The Lua scripts that make every lock operation one atomic step on the server.
//!
//! Each script touches the keys of one lock only (one hash tag), except the batched renewal,
//! which takes every key the client holds. `redis::Script` sends `EVALSHA` and reloads a
//! script the server no longer knows (after `SCRIPT FLUSH` or a restart) transparently.

use std::sync::OnceLock;

use redis::Script;

/// Helpers shared by the scripts that look at the waiting line.
///
/// A waiter id is `<client id>:<sequence>:<lease ms>` (and the owner id it holds the lock
/// under); the client is subscribed to
/// `<wake channel prefix><client id>` for as long as it lives. An entry is alive while its
/// deadline has not passed and its client still listens (a crashed client's entries are
/// skipped at once, not after their deadline).
const LINE: &str = r"
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function channel_of(entry, prefix)
  return prefix .. string.match(entry, '^[^:]*')
end
local function leave_line(queue, deadlines, entry)
  redis.call('LREM', queue, 1, entry)
  redis.call('HDEL', deadlines, entry)
end
local function expired(deadlines, entry, now)
  local deadline = redis.call('HGET', deadlines, entry)
  return (not deadline) or tonumber(deadline) <= now
end
-- Wakes the first live waiter with `kind` (r: the lock is free, h: you are first, the lease
-- runs `ms` more), dropping dead entries on the way. One message per call: no herd.
local function wake_first(queue, deadlines, prefix, kind, ms, now)
  while true do
    local head = redis.call('LINDEX', queue, 0)
    if not head then return end
    if not expired(deadlines, head, now) then
      local listeners = redis.call('PUBLISH', channel_of(head, prefix), head .. ' ' .. kind .. ' ' .. ms)
      if listeners > 0 then return end
    end
    leave_line(queue, deadlines, head)
  end
end
-- Bumps the fence counter. A counter the server lost (restart without persistence) starts
-- again from the server's clock in microseconds, above every token it issued before.
local function bump_fence(fence, now)
  local token = redis.call('INCR', fence)
  if token == 1 then
    token = (now or server_ms()) * 1000
    redis.call('SET', fence, string.format('%.0f', token))
  end
  return token
end
local function alive(deadlines, entry, prefix, now)
  return (not expired(deadlines, entry, now))
    and redis.call('PUBSUB', 'NUMSUB', channel_of(entry, prefix))[2] > 0
end
-- The lock is free and the line fair: give it to the first live waiter at once (its entry
-- `<client>:<seq>:<lease ms>` is its owner id and says its lease), tell it its token, and
-- tell the next one it is now first. Dead entries are dropped on the way.
local function hand_over(lock, fence, queue, deadlines, prefix)
  local now = server_ms()
  while true do
    local head = redis.call('LINDEX', queue, 0)
    if not head then return end
    local lease = tonumber(string.match(head, ':(%d+)$'))
    if lease and lease > 0 and alive(deadlines, head, prefix, now) then
      leave_line(queue, deadlines, head)
      local token = bump_fence(fence, now)
      redis.call('SET', lock, head, 'PX', lease)
      redis.call('PUBLISH', channel_of(head, prefix), head .. ' g ' .. string.format('%.0f', token))
      local next = redis.call('LINDEX', queue, 0)
      if next then
        redis.call('PUBLISH', channel_of(next, prefix), next .. ' h ' .. lease)
      end
      return
    end
    leave_line(queue, deadlines, head)
  end
end
-- The lock is free: hand it over (fair) or wake the first live waiter to come and take it.
local function lock_freed(lock, fence, queue, deadlines, prefix, fair)
  if redis.call('LLEN', queue) == 0 then return end
  if fair then
    hand_over(lock, fence, queue, deadlines, prefix)
  else
    wake_first(queue, deadlines, prefix, 'r', 0, server_ms())
  end
end
";

/// KEYS: lock, fence, queue, deadlines.
/// ARGV: owner, lease ms, waiter id ('' for a try), waiter's wait ms, fair (1/0), channel
/// prefix.
///
/// A free lock goes to the first live waiter in line (fair), or, unfair (Redlock), to any
/// waiter already in line; a newcomer gets it only when nobody live waits. A fair grant takes
/// the waiter out of the line; an unfair one leaves it in (a Redlock waiter that misses the
/// majority keeps its place, and leaves every line itself once it holds the lock).
/// Returns `{1, token}` when granted, `{0, holder's pttl, first in line (1/0)}` when not, and
/// `{-1}` when the lock key holds another type.
const ACQUIRE: &str = r"
local lock, fence, queue, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner, lease, waiter = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local wait_ms, fair, prefix = tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6]
local kind = redis.call('TYPE', lock).ok
if kind ~= 'none' and kind ~= 'string' then return {-1} end
if kind == 'string' and redis.call('GET', lock) == owner then
  -- Handed over to us by a release (we may have missed the message): confirm it.
  redis.call('PEXPIRE', lock, lease)
  return {1, tonumber(redis.call('GET', fence) or '0')}
end
local now = nil
if kind == 'none' then
  local my_turn, head = true, redis.call('LINDEX', queue, 0)
  local member = head and (not fair) and waiter ~= ''
      and redis.call('HEXISTS', deadlines, waiter) == 1
  while head and head ~= waiter and not member do
    now = now or server_ms()
    if alive(deadlines, head, prefix, now) then
      my_turn = false
      break
    end
    leave_line(queue, deadlines, head)
    head = redis.call('LINDEX', queue, 0)
  end
  if my_turn then
    if fair and head then
      -- We are first in line: step out of it.
      leave_line(queue, deadlines, waiter)
      head = redis.call('LINDEX', queue, 0)
    end
    local token = bump_fence(fence, now)
    redis.call('SET', lock, owner, 'PX', lease)
    if head and head ~= waiter then
      redis.call('PUBLISH', channel_of(head, prefix), head .. ' h ' .. lease)
    end
    return {1, token}
  end
end
if waiter == '' then return {0, redis.call('PTTL', lock), 0} end
now = now or server_ms()
if not redis.call('HGET', deadlines, waiter) then
  redis.call('RPUSH', queue, waiter)
end
redis.call('HSET', deadlines, waiter, now + wait_ms)
local keep = math.max(wait_ms, redis.call('PTTL', queue))
redis.call('PEXPIRE', queue, keep)
redis.call('PEXPIRE', deadlines, keep)
local first = redis.call('LINDEX', queue, 0) == waiter
return {0, redis.call('PTTL', lock), first and 1 or 0}
";

/// KEYS: lock, fence, queue, deadlines. ARGV: owner, channel prefix, fair (1/0).
/// Returns 1 when released, 0 when the lock is not ours, -1 when the key holds another type.
/// A fair line gets the lock handed over to its first live waiter in the same step.
const RELEASE: &str = r"
local lock, fence, queue, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ok, holder = pcall(redis.call, 'GET', lock)
if not ok then return -1 end
if holder ~= ARGV[1] then return 0 end
redis.call('DEL', lock)
lock_freed(lock, fence, queue, deadlines, ARGV[2], ARGV[3] == '1')
return 1
";

/// KEYS: lock. ARGV: owner, ms. Returns 1 when extended, 0 when not ours, -1 for a key of
/// another type.
const EXTEND: &str = r"
local ok, holder = pcall(redis.call, 'GET', KEYS[1])
if not ok then return -1 end
if holder ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: every lock to renew. ARGV: owner and ms for each, in pairs.
/// Returns one 1 (renewed) or 0 (no longer ours) per key.
const RENEW: &str = r"
local renewed = {}
for i, lock in ipairs(KEYS) do
  local ok, holder = pcall(redis.call, 'GET', lock)
  if ok and holder == ARGV[2 * i - 1] then
    redis.call('PEXPIRE', lock, ARGV[2 * i])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
";

/// KEYS: lock, fence, queue, deadlines. ARGV: waiter id, channel prefix, fair (1/0).
/// Leaves the line; if the leaver was first, hands its turn on; if the lock was handed over
/// to it meanwhile, gives the lock back at once.
const LEAVE: &str = r"
local lock, fence, queue, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local waiter, prefix, fair = ARGV[1], ARGV[2], ARGV[3] == '1'
local ok, holder = pcall(redis.call, 'GET', lock)
if ok and holder == waiter then
  redis.call('DEL', lock)
  leave_line(queue, deadlines, waiter)
  lock_freed(lock, fence, queue, deadlines, prefix, fair)
  return 1
end
local was_first = redis.call('LINDEX', queue, 0) == waiter
leave_line(queue, deadlines, waiter)
if was_first then
  local pttl = redis.call('PTTL', lock)
  if pttl == -2 then
    lock_freed(lock, fence, queue, deadlines, prefix, fair)
  else
    wake_first(queue, deadlines, prefix, 'h', math.max(pttl, 0), server_ms())
  end
end
return 1
";

/// KEYS: fence. ARGV: token. Raises the counter to at least the token (Redlock).
const RAISE_FENCE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
";

/// KEYS: lock, fence, queue. Returns `{holder's pttl (-2 when free), fence counter, waiters}`
/// without changing anything.
const INSPECT: &str = r"
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
return {redis.call('PTTL', KEYS[1]), fence, redis.call('LLEN', KEYS[3])}
";

/// The compiled scripts (their SHA1 digests are computed once).
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) release: Script,
    pub(crate) extend: Script,
    pub(crate) renew: Script,
    pub(crate) leave: Script,
    pub(crate) raise_fence: Script,
    pub(crate) inspect: Script,
}

/// The scripts, shared by every client of the process.
pub(crate) fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let with_line = |body: &str| Script::new(&format!("{LINE}\n{body}"));
        Scripts {
            acquire: with_line(ACQUIRE),
            release: with_line(RELEASE),
            extend: Script::new(EXTEND),
            renew: Script::new(RENEW),
            leave: with_line(LEAVE),
            raise_fence: Script::new(RAISE_FENCE),
            inspect: Script::new(INSPECT),
        }
    })
}
