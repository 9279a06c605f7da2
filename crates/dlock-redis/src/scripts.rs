//! The Lua scripts that make every lock operation one atomic step on the server.
//!
//! Each script touches the keys of one lock only (one hash tag), except the batched renewal,
//! which takes every key the client holds. `redis::Script` sends `EVALSHA` and reloads a
//! script the server no longer knows (after `SCRIPT FLUSH` or a restart) transparently.

use std::sync::OnceLock;

use redis::Script;

/// How long a fence counter outlives its lock (released, expired, given back). Within this
/// time a new acquisition continues the counter; after it, tokens restart from the server
/// clock, which is then past every token the counter issued, unless the clock stepped back by
/// more than this (or, on Redlock, instance clocks are further apart than this).
pub(crate) const FENCE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Helpers shared by the scripts that look at the waiting line or bump the fence counter.
///
/// A waiter id is `<client id>:<sequence>:<lease ms>` (and the owner id it holds the lock
/// under on a single instance); the waiter listens on `<wake channel prefix><waiter id>` for
/// as long as it waits, and only then. Its entry in the deadlines hash is
/// `<deadline ms>/<attempt>`: the server time after which it no longer counts, and the number
/// of the waiter's latest request, which a grant message repeats so the waiter can tell a
/// grant of its current request from one left over from an earlier one. An entry is alive
/// while its deadline has not passed and its waiter still listens, so an entry whose waiter
/// is gone (crashed, cancelled, served before a restart reloaded the line) is skipped at once.
///
/// **Fencing tokens** are `max(counter + 1, server time in ms × 1000)`: the counter orders
/// acquisitions within one millisecond, the clock keeps tokens growing when the counter went
/// back (a restart that reloaded an older snapshot, AOF that lost its tail, a promoted replica
/// behind its primary) or went away (evicted, or expired: it lives only while its lock does,
/// plus `FENCE_GRACE`). A key is acquired far fewer than 1000 times a millisecond, so every
/// token is below the next millisecond's floor, and tokens grow as long as the clock of the
/// server that issues the next token reads later than the clock did when the lost tokens were
/// issued (the server clock does not step back by more than a restart or failover takes).
const LINE: &str = r"
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function channel_of(entry, prefix)
  return prefix .. entry
end
local function leave_line(queue, deadlines, entry)
  redis.call('LREM', queue, 1, entry)
  redis.call('HDEL', deadlines, entry)
end
-- The entry's deadline (nil when it has none), the number of its latest request and the
-- waiter's owner description: `<deadline>/<request>/<description>`.
local function entry_of(deadlines, entry)
  local value = redis.call('HGET', deadlines, entry)
  if not value then return nil, '0', '' end
  local deadline = string.match(value, '^%d+')
  return deadline and tonumber(deadline), string.match(value, '^%d+/(%d+)') or '0',
    string.match(value, '^%d+/%d+/(.*)$') or ''
end
local function expired(deadlines, entry, now)
  local deadline = entry_of(deadlines, entry)
  return (not deadline) or deadline <= now
end
-- Wakes the first live waiter with `kind` (r: the lock is free, h: you are first, the lease
-- runs `ms` more, -1 for a lock without expiry), dropping dead entries on the way. One
-- message per call: no herd.
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
-- The next fencing token of the lock; the counter lives as long as a lease of `lease` ms
-- taken now, plus the grace.
local function bump_fence(fence, now, lease)
  local floor = now * 1000
  local token = redis.call('INCR', fence)
  if token < floor then
    token = floor
    redis.call('SET', fence, string.format('%.0f', token), 'PX', lease + FENCE_GRACE)
  else
    redis.call('PEXPIRE', fence, lease + FENCE_GRACE)
  end
  return token
end
-- The lock is gone (released, given back): its counter is needed only until the clock has
-- passed the tokens it issued.
local function fence_after_lock(fence)
  redis.call('PEXPIRE', fence, FENCE_GRACE)
end
local function alive(deadlines, entry, prefix, now)
  return (not expired(deadlines, entry, now))
    and redis.call('PUBSUB', 'NUMSUB', channel_of(entry, prefix))[2] > 0
end
-- The lock is free and the line fair: give it to the first live waiter at once (its entry
-- `<client>:<seq>:<lease ms>` is its owner id and says its lease), tell it its token and
-- which of its requests the grant answers, and tell the next one it is now first. Dead
-- entries are dropped on the way; a waiter that stopped listening is found by the grant
-- reaching nobody (the lock is set only when the grant reached it).
local function hand_over(lock, fence, queue, deadlines, prefix, index)
  local now = server_ms()
  while true do
    local head = redis.call('LINDEX', queue, 0)
    if not head then return false end
    local lease = tonumber(string.match(head, ':(%d+)$'))
    local deadline, attempt, description = entry_of(deadlines, head)
    leave_line(queue, deadlines, head)
    if lease and lease > 0 and deadline and deadline > now then
      local token = bump_fence(fence, now, lease)
      local message = head .. ' g ' .. string.format('%.0f', token) .. ' ' .. attempt
      if redis.call('PUBLISH', channel_of(head, prefix), message) > 0 then
        redis.call('SET', lock, holder_value(head, now, description), 'PX', lease)
        keep_index(index, lease)
        -- To the first live one: a dead next in line would learn nothing.
        wake_first(queue, deadlines, prefix, 'h', lease, now)
        return true
      end
    end
  end
end
-- The lock is free: hand it over (fair) or wake the first live waiter to come and take it.
-- True when it was handed over (the lock is held again, and stays in the index).
local function lock_freed(lock, fence, queue, deadlines, prefix, fair, index)
  if redis.call('LLEN', queue) == 0 then return false end
  if fair then
    return hand_over(lock, fence, queue, deadlines, prefix, index)
  end
  wake_first(queue, deadlines, prefix, 'r', 0, server_ms())
  return false
end
";

/// KEYS: lock, fence, queue, deadlines, index.
/// ARGV: owner, lease ms, waiter id ('' for a try), how long the entry counts (ms), fair
/// (1/0), channel prefix, the number of this request of the waiter, the owner description,
/// the lock's key in the index.
///
/// A free lock goes to the first live waiter in line (fair), or, unfair (Redlock), to any
/// waiter already in line; a newcomer gets it only when nobody live waits. A fair grant takes
/// the waiter out of the line; an unfair one leaves it in (a Redlock waiter that misses the
/// majority keeps its place, and leaves every line itself once it holds the lock). A lock
/// already handed to `owner` is confirmed (with a fresh token if its counter is gone).
/// Returns `{1, token}` when granted, `{0, ms, 1}` when the waiter should look again in `ms`
/// at the latest (the holder's pttl, for every waiter in line; or, the lock being free, for
/// the second behind a head that has not taken it yet: that head's entry time left),
/// `{0, holder's pttl, 0}` otherwise (no expiry, or a try), and `{-1}` when the lock key
/// holds another type.
const ACQUIRE: &str = r"
local lock, fence, queue, deadlines, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local owner, lease, waiter = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local wait_ms, fair, prefix, attempt = tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6], ARGV[7]
local description, key_name = ARGV[8], ARGV[9]
local kind = redis.call('TYPE', lock).ok
if kind ~= 'none' and kind ~= 'string' then return {-1} end
if kind == 'string' and holder_id(redis.call('GET', lock)) == owner then
  -- Handed over to us by a release (we may have missed the message): confirm it.
  redis.call('PEXPIRE', lock, lease)
  keep_index(index, lease)
  local token = tonumber(redis.call('GET', fence) or '0')
  if token > 0 then
    redis.call('PEXPIRE', fence, lease + FENCE_GRACE)
  else
    token = bump_fence(fence, server_ms(), lease)
  end
  return {1, token}
end
-- Read only when needed: a try on a held lock does without.
local now = nil
if kind == 'none' then
  now = server_ms()
  local my_turn, head = true, redis.call('LINDEX', queue, 0)
  local member = head and (not fair) and waiter ~= ''
      and redis.call('HEXISTS', deadlines, waiter) == 1
  while head and head ~= waiter and not member do
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
    local token = bump_fence(fence, now, lease)
    redis.call('SET', lock, holder_value(owner, now, description), 'PX', lease)
    redis.call('ZADD', index, 0, key_name)
    keep_index(index, lease)
    if head and head ~= waiter then
      wake_first(queue, deadlines, prefix, 'h', lease, now)
    end
    return {1, token}
  end
end
if waiter == '' then return {0, redis.call('PTTL', lock), 0} end
now = now or server_ms()
if not redis.call('HGET', deadlines, waiter) then
  redis.call('RPUSH', queue, waiter)
end
redis.call('HSET', deadlines, waiter,
  string.format('%.0f/%s/%s', now + wait_ms, attempt, description))
local keep = math.max(wait_ms, redis.call('PTTL', queue))
redis.call('PEXPIRE', queue, keep)
redis.call('PEXPIRE', deadlines, keep)
-- Dead entries before us (crashed or cancelled waiters, a line reloaded after a restart)
-- must not keep us from being first, whose timer takes over a lock nobody releases.
local head = redis.call('LINDEX', queue, 0)
while head and head ~= waiter and not alive(deadlines, head, prefix, now) do
  leave_line(queue, deadlines, head)
  head = redis.call('LINDEX', queue, 0)
end
local pttl = redis.call('PTTL', lock)
-- Every waiter, first or not, looks again when the holder's lease runs out: the waiters
-- ahead of it may all be gone by then (killed: nobody hands the turn on, and nothing tells
-- Redis's line that a subscriber left), and then this call finds them dead and makes it
-- first, or grants it the lock.
if pttl >= 0 then return {0, pttl, 1} end
if head == waiter then return {0, pttl, 1} end
-- Second behind a head that has not taken the free lock yet: look again when the head's own
-- entry runs out, so a head that seems to listen but is gone (a frozen process, a crashed
-- host's open connection) holds the line no longer than that.
if pttl == -2 and head and redis.call('LINDEX', queue, 1) == waiter then
  local deadline = entry_of(deadlines, head)
  if deadline then return {0, deadline - now, 1} end
end
return {0, pttl, 0}
";

/// KEYS: lock, fence, queue, deadlines, index. ARGV: owner, channel prefix, fair (1/0), the
/// lock's key in the index.
/// Returns 1 when released, 0 when the lock is not ours, -1 when the key holds another type.
/// A fair line gets the lock handed over to its first live waiter in the same step; a lock
/// nobody took over leaves the index.
const RELEASE: &str = r"
local lock, fence, queue, deadlines, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ok, holder = pcall(redis.call, 'GET', lock)
if not ok then return -1 end
if holder_id(holder) ~= ARGV[1] then return 0 end
redis.call('DEL', lock)
fence_after_lock(fence)
if not lock_freed(lock, fence, queue, deadlines, ARGV[2], ARGV[3] == '1', index) then
  redis.call('ZREM', index, ARGV[4])
end
return 1
";

/// KEYS: lock, fence, index. ARGV: owner, ms. Returns 1 when extended, 0 when not ours, -1 for
/// a key of another type. The fence counter lives as long as the lock, plus `FENCE_GRACE`;
/// the index at least as long as the lock.
const EXTEND: &str = r"
local ok, holder = pcall(redis.call, 'GET', KEYS[1])
if not ok then return -1 end
if holder_id(holder) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + FENCE_GRACE)
keep_index(KEYS[3], tonumber(ARGV[2]))
return 1
";

/// KEYS: each lock to renew, its fence counter and its index, in threes. ARGV: owner and ms
/// for each, in pairs. Returns one 1 (renewed) or 0 (no longer ours) per lock. The counter
/// lives as long as the lock, plus `FENCE_GRACE`; each index, touched once per call, at least
/// as long as its longest lock.
const RENEW: &str = r"
local renewed, longest = {}, {}
for i = 1, #KEYS / 3 do
  local lock, fence, index = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local ok, holder = pcall(redis.call, 'GET', lock)
  if ok and holder_id(holder) == ARGV[2 * i - 1] then
    local ms = tonumber(ARGV[2 * i])
    redis.call('PEXPIRE', lock, ms)
    redis.call('PEXPIRE', fence, ms + FENCE_GRACE)
    if (longest[index] or 0) < ms then longest[index] = ms end
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
for index, ms in pairs(longest) do keep_index(index, ms) end
return renewed
";

/// KEYS: lock, fence, queue, deadlines, index. ARGV: waiter id, channel prefix, fair (1/0), the
/// lock's key in the index.
/// Leaves the line; if the leaver was first, hands its turn on; if the lock was handed over
/// to it meanwhile, gives the lock back at once.
const LEAVE: &str = r"
local lock, fence, queue, deadlines, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local waiter, prefix, fair = ARGV[1], ARGV[2], ARGV[3] == '1'
local ok, holder = pcall(redis.call, 'GET', lock)
if ok and holder_id(holder) == waiter then
  redis.call('DEL', lock)
  fence_after_lock(fence)
  leave_line(queue, deadlines, waiter)
  if not lock_freed(lock, fence, queue, deadlines, prefix, fair, index) then
    redis.call('ZREM', index, ARGV[4])
  end
  return 1
end
local was_first = redis.call('LINDEX', queue, 0) == waiter
leave_line(queue, deadlines, waiter)
if was_first then
  local pttl = redis.call('PTTL', lock)
  if pttl == -2 then
    lock_freed(lock, fence, queue, deadlines, prefix, fair, index)
  else
    wake_first(queue, deadlines, prefix, 'h', pttl, server_ms())
  end
end
return 1
";

/// KEYS: fence, lock. ARGV: token. Raises the counter to at least the token (Redlock); the
/// counter then lives as long as the lock, plus `FENCE_GRACE`.
const RAISE_FENCE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  local keep = math.max(redis.call('PTTL', KEYS[2]), 0) + FENCE_GRACE
  redis.call('SET', KEYS[1], ARGV[1], 'PX', keep)
end
return 1
";

/// KEYS: lock, fence, queue, and for a `list`, the index. ARGV: for a `list`, the lock's key in
/// the index. Returns `{holder's pttl (-2 when free), fence counter, waiters, the lock's value
/// ('' when free or not a string)}`. Changes nothing, except that a `list` drops the index
/// entry of a lock it finds free (one whose holder expired without a release).
const INSPECT: &str = r"
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local pttl = redis.call('PTTL', KEYS[1])
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if not ok or not value then value = '' end
if pttl == -2 and KEYS[4] then redis.call('ZREM', KEYS[4], ARGV[1]) end
return {pttl, fence, redis.call('LLEN', KEYS[3]), value}
";

/// Helpers for the lock's value and the index of held locks, shared by every script.
///
/// A lock's value is `<owner id>\n<acquired at, server ms>\n<owner description>`: what
/// `report` and `list` read, in the key that already expires with the lease, so the holder's
/// details cost no key and no command of their own and can never outlive the lock. (A value
/// written by an older version, or by hand, is the bare owner id.) Only the id decides
/// ownership; the description is printable text (checked by core), so it has no newline.
///
/// The index (`LockNames::index`) lists the keys of the held locks of one namespace and
/// prefix: `ZADD` when a lock is taken, `ZREM` when it is freed and nobody took it over; its
/// expiry is kept at the longest lease of its locks (acquire, extend, renew, hand-over), so it
/// goes with its last lock. An entry whose lock expired without a release (a crashed holder)
/// stays until a `list` reading it finds the lock free, or the index expires.
const HOLDER: &str = r"
local function holder_id(value)
  if not value then return nil end
  return string.match(value, '^[^\n]*')
end
local function holder_value(id, now, description)
  return id .. '\n' .. string.format('%.0f', now) .. '\n' .. description
end
local function keep_index(index, ms)
  if redis.call('PTTL', index) < ms then redis.call('PEXPIRE', index, ms) end
end
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
        let grace = format!("local FENCE_GRACE = {}\n", FENCE_GRACE.as_millis());
        let with_line = |body: &str| Script::new(&format!("{grace}{HOLDER}{LINE}\n{body}"));
        let with_grace = |body: &str| Script::new(&format!("{grace}{HOLDER}{body}"));
        Scripts {
            acquire: with_line(ACQUIRE),
            release: with_line(RELEASE),
            extend: with_grace(EXTEND),
            renew: with_grace(RENEW),
            leave: with_line(LEAVE),
            raise_fence: with_grace(RAISE_FENCE),
            inspect: Script::new(INSPECT),
        }
    })
}
