//! The Lua scripts that make every lock operation one atomic step on the server.
//!
//! Each script touches the keys of one lock only (one hash tag), except the batched renewal,
//! which takes every key the client holds. `redis::Script` sends `EVALSHA` and reloads a
//! script the server no longer knows (after `SCRIPT FLUSH` or a restart) transparently.

use std::sync::OnceLock;

use redis::Script;

use crate::config::Layout;

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
///
/// **Modes** (issue 15). A contender's mode rides in its owner and waiter ids: `@shared` or
/// `@permit/<n>` after the client's sequence number, nothing for an exclusive contender (a
/// mutex, a writer, a leader; and every id of an older version). The exclusive holder is the
/// lock key itself, as it always was; shared and permit holders each own a key of their own,
/// `<holder prefix><owner id>`, holding what a lock key holds and expiring with their own
/// lease (so one holder's expiry touches nobody else), listed in the holders sorted set
/// scored by their token (grant order). A member whose key expired is dropped when a script
/// meets it. Who holds the key next is decided by `turn`, the server's copy of
/// `dlock_core::turn`, from the modes of the holders and of the live waiters ahead.
///
/// **Watchers** (`wait_for_change`) list their ids in the watchers set; every grant, release
/// and owner update sends each `<id> c 0` on its wake channel, and drops the ids nobody
/// listens for any more.
const LINE: &str = r"
local function channel_of(entry, prefix)
  return prefix .. entry
end
-- The keys of the lock a line script works on, in their fixed order in KEYS, with the wake
-- channel prefix, the prefix of the holders' own keys and the lock's key in the index.
local function lock_keys(prefix, hp, member)
  return {lock = KEYS[1], fence = KEYS[2], queue = KEYS[3], deadlines = KEYS[4],
    index = KEYS[5], holders = KEYS[6], watchers = KEYS[7], prefix = prefix, hp = hp,
    member = member}
end
-- The mode of a contender, from its owner or waiter id (see above).
local function mode_of(id)
  return string.match(id, '@(%a+/?%d*)') or 'exclusive'
end
local function permits_of(mode)
  return tonumber(string.match(mode, '^permit/(%d+)$'))
end
-- `LockMode::mixes_with`: permits only with the same count, the others with each other.
local function mixes(a, b)
  local pa, pb = permits_of(a), permits_of(b)
  if pa or pb then return pa == pb end
  return true
end
-- THE rule of `dlock_core::turn` (crates/dlock-core/src/mode.rs), which decides whose turn
-- it is for every backend; this is its copy for the server and must say what it says.
-- `ahead` lists the modes of the holders and of the live waiters ahead, oldest first.
-- Returns 'granted', 'wait', or 'incompatible' and the mode that disagrees. (Whom to wait
-- for is not needed here: releases hand the key over from the head of the line.)
local function turn(mode, ahead)
  for _, other in ipairs(ahead) do
    if not mixes(mode, other) then return 'incompatible', other end
  end
  if mode == 'exclusive' then
    if #ahead == 0 then return 'granted' end
    return 'wait'
  end
  if mode == 'shared' then
    for _, other in ipairs(ahead) do
      if other == 'exclusive' then return 'wait' end
    end
    return 'granted'
  end
  if #ahead < permits_of(mode) then return 'granted' end
  return 'wait'
end
-- The key holding what the holder `id` holds: the lock key for an exclusive holder.
local function own_key(k, id)
  if mode_of(id) == 'exclusive' then return k.lock end
  return k.hp .. id
end
-- The least of two remaining times as PTTL gives them (-2: none, -1: no expiry).
local function sooner(a, b)
  if a < 0 and b < 0 then return math.max(a, b) end
  if a < 0 then return b end
  if b < 0 then return a end
  return math.min(a, b)
end
-- The modes of the key's holders, oldest first, and the least time left of their leases
-- (-2 when nobody holds it); members whose key expired leave the holders set. `lock_pttl`:
-- the lock key's PTTL when the caller knows it.
local function holders_of(k, lock_pttl)
  local modes, pttl = {}, lock_pttl or redis.call('PTTL', k.lock)
  if pttl ~= -2 then modes[1] = 'exclusive' end
  for _, id in ipairs(redis.call('ZRANGE', k.holders, 0, -1)) do
    local left = redis.call('PTTL', k.hp .. id)
    if left == -2 then
      redis.call('ZREM', k.holders, id)
    else
      modes[#modes + 1] = mode_of(id)
      pttl = sooner(pttl, left)
    end
  end
  return modes, pttl
end
local function still_held(k)
  local modes = holders_of(k)
  return #modes > 0
end
-- Makes `id` a holder from `now` for `lease` ms, with its token.
local function hold(k, id, now, lease, description, token)
  local value = holder_value(id, now, description)
  if mode_of(id) == 'exclusive' then
    redis.call('SET', k.lock, value, 'PX', lease)
  else
    redis.call('SET', k.hp .. id, value, 'PX', lease)
    redis.call('ZADD', k.holders, string.format('%.0f', token), id)
    keep_at_least(k.holders, lease)
  end
  redis.call('ZADD', k.index, 0, k.member)
  keep_index(k.index, lease)
end
local function let_go(k, id)
  if mode_of(id) == 'exclusive' then
    redis.call('DEL', k.lock)
  else
    redis.call('DEL', k.hp .. id)
    redis.call('ZREM', k.holders, id)
  end
end
local function changed(k)
  notify_watchers(k.watchers, k.prefix)
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
-- Puts `waiter` in line (at the end, unless it stands there already) and refreshes its entry.
local function join_line(k, waiter, now, wait_ms, attempt, description)
  if not redis.call('HGET', k.deadlines, waiter) then
    redis.call('RPUSH', k.queue, waiter)
  end
  redis.call('HSET', k.deadlines, waiter,
    string.format('%.0f/%s/%s', now + wait_ms, attempt, description))
  local keep = math.max(wait_ms, redis.call('PTTL', k.queue))
  redis.call('PEXPIRE', k.queue, keep)
  redis.call('PEXPIRE', k.deadlines, keep)
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
local function alive(deadlines, entry, prefix, now)
  return (not expired(deadlines, entry, now))
    and redis.call('PUBSUB', 'NUMSUB', channel_of(entry, prefix))[2] > 0
end
-- The line may move (fair lines): grant the key, in line order, to every live waiter at the
-- head whose turn it now is (a writer's release may admit several readers, a returned
-- permit one waiter), telling each its token and which of its requests the grant answers
-- (an entry `<client>:<seq>[@mode]:<lease ms>` is its owner id and says its lease), then
-- tell the first one left that it is first. Dead entries are dropped on the way; a waiter
-- that stopped listening is found by the grant reaching nobody (it holds the key only when
-- the grant reached it). True when anyone was granted.
-- `ahead`: the holders' modes when the caller knows them (nobody, after an exclusive
-- holder let go).
local function hand_over(k, ahead)
  if redis.call('LLEN', k.queue) == 0 then return false end
  local now = server_ms()
  ahead = ahead or holders_of(k)
  local granted = nil
  while true do
    local head = redis.call('LINDEX', k.queue, 0)
    if not head then break end
    local lease = tonumber(string.match(head, ':(%d+)$'))
    local deadline, attempt, description = entry_of(k.deadlines, head)
    if lease and lease > 0 and deadline and deadline > now then
      local mode = mode_of(head)
      if turn(mode, ahead) ~= 'granted' then break end
      leave_line(k.queue, k.deadlines, head)
      local token = bump_fence(k.fence, now, lease, mode)
      local message = head .. ' g ' .. string.format('%.0f', token) .. ' ' .. attempt
      if redis.call('PUBLISH', channel_of(head, k.prefix), message) > 0 then
        hold(k, head, now, lease, description, token)
        ahead[#ahead + 1] = mode
        granted = math.min(granted or lease, lease)
        -- Nobody comes in beside a writer: no need to read the next one.
        if mode == 'exclusive' then break end
      end
    else
      leave_line(k.queue, k.deadlines, head)
    end
  end
  if granted then
    -- To the first live one: a dead next in line would learn nothing.
    wake_first(k.queue, k.deadlines, k.prefix, 'h', granted, now)
    return true
  end
  return false
end
-- A holder let go: hand the key over (fair) or wake the first live waiter to come and take
-- it. True when it was handed over. `ahead` as for `hand_over`.
local function lock_freed(k, fair, ahead)
  if fair then
    return hand_over(k, ahead)
  end
  if redis.call('LLEN', k.queue) == 0 then return false end
  wake_first(k.queue, k.deadlines, k.prefix, 'r', 0, server_ms())
  return false
end
-- After a holder let go: the line moves on; a key nobody holds any more leaves the index
-- and lets its fence counter run out; watchers hear of the change. An exclusive holder held
-- the key alone (`exclusive_left`): once it let go, nobody holds it, nothing to read.
local function move_on(k, fair, exclusive_left)
  local nobody = exclusive_left and {} or nil
  if not lock_freed(k, fair, nobody) and (exclusive_left or not still_held(k)) then
    fence_after_lock(k.fence)
    redis.call('ZREM', k.index, k.member)
  end
  changed(k)
end
-- `waiter`'s mode disagrees with `found`: it leaves the line (if it stood there) and the
-- script answers `{-2, found}`, the found mode as a number (0 exclusive, -1 shared, n permits).
local function incompatible(k, waiter, found)
  if waiter ~= '' then leave_line(k.queue, k.deadlines, waiter) end
  local code = permits_of(found) or ((found == 'shared') and -1) or 0
  return {-2, code}
end
";

/// The fence counter, in every layout: see the fencing tokens of [`LINE`].
const FENCE: &str = r"
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Keeps the fence counter for a lease of `lease` ms taken now, plus the grace: exactly that
-- for an exclusive holder (the only one), at least that for one of several.
local function keep_fence(fence, lease, mode)
  if mode == 'exclusive' then
    redis.call('PEXPIRE', fence, lease + FENCE_GRACE)
  else
    keep_at_least(fence, lease + FENCE_GRACE)
  end
end
-- The next fencing token of the lock, for a holder in `mode` with a lease of `lease` ms.
local function bump_fence(fence, now, lease, mode)
  local floor = now * 1000
  local token = redis.call('INCR', fence)
  if token < floor then
    token = floor
    if mode == 'exclusive' then
      redis.call('SET', fence, string.format('%.0f', token), 'PX', lease + FENCE_GRACE)
      return token
    end
    redis.call('SET', fence, string.format('%.0f', token), 'KEEPTTL')
  end
  keep_fence(fence, lease, mode)
  return token
end
-- The lock is gone (released, given back): its counter is needed only until the clock has
-- passed the tokens it issued.
local function fence_after_lock(fence)
  redis.call('PEXPIRE', fence, FENCE_GRACE)
end
";

/// KEYS: lock, fence, queue, deadlines, index, holders, watchers.
/// ARGV: owner, lease ms, waiter id ('' for a try), how long the entry counts (ms), fair
/// (1/0), channel prefix, the number of this request of the waiter, the owner description,
/// the lock's key in the index, the prefix of the holders' own keys.
///
/// Exclusive: a free lock goes to the first live waiter in line (fair), or, unfair
/// (Redlock), to any waiter already in line; a newcomer gets it only when nobody live waits
/// and nobody holds it. A fair grant takes the waiter out of the line; an unfair one leaves
/// it in (a Redlock waiter that misses the majority keeps its place, and leaves every line
/// itself once it holds the lock). Shared and permit contenders (fair lines only) are granted
/// by `turn` over the holders and the live waiters ahead. A lock already handed to `owner` is
/// confirmed (with a fresh token if its counter is gone).
/// Returns `{1, token}` when granted, `{0, ms, 1}` when the waiter should look again in `ms`
/// at the latest (the holders' least pttl, for every waiter in line; or, the lock being free,
/// for a waiter behind one that has not taken it yet: that one's entry time left),
/// `{0, holder's pttl, 0}` otherwise (no expiry, or a try), `{-2, mode found}` when the
/// modes disagree (see `incompatible`), and `{-1}` when the lock key holds another type.
const ACQUIRE: &str = r"
local owner, lease, waiter = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local wait_ms, fair, attempt = tonumber(ARGV[4]), ARGV[5] == '1', ARGV[7]
local description = ARGV[8]
local k = lock_keys(ARGV[6], ARGV[10], ARGV[9])
local lock, fence, queue, deadlines, prefix = k.lock, k.fence, k.queue, k.deadlines, k.prefix
local mode = mode_of(owner)
local kind = redis.call('TYPE', lock).ok
if kind ~= 'none' and kind ~= 'string' then return {-1} end
local mine = own_key(k, owner)
if (kind == 'string' or mode ~= 'exclusive') and holder_id(redis.call('GET', mine)) == owner then
  -- Handed over to us by a release (we may have missed the message): confirm it.
  redis.call('PEXPIRE', mine, lease)
  keep_index(k.index, lease)
  local token
  if mode == 'exclusive' then
    token = tonumber(redis.call('GET', fence) or '0')
  else
    keep_at_least(k.holders, lease)
    token = tonumber(redis.call('ZSCORE', k.holders, owner) or '0')
  end
  if token > 0 then
    keep_fence(fence, lease, mode)
  else
    token = bump_fence(fence, server_ms(), lease, mode)
    if mode ~= 'exclusive' then
      redis.call('ZADD', k.holders, string.format('%.0f', token), owner)
    end
  end
  return {1, token}
end
if mode ~= 'exclusive' then
  -- Shared and permit contenders: the rule decides from the holders and the live waiters
  -- ahead (dead ones leave the line on the way).
  local now = server_ms()
  local ahead, pttl = holders_of(k)
  local first_deadline = nil
  for _, entry in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    if entry == waiter then break end
    if alive(deadlines, entry, prefix, now) then
      ahead[#ahead + 1] = mode_of(entry)
      first_deadline = first_deadline or entry_of(deadlines, entry)
    else
      leave_line(queue, deadlines, entry)
    end
  end
  local verdict, found = turn(mode, ahead)
  if verdict == 'incompatible' then return incompatible(k, waiter, found) end
  if verdict == 'granted' then
    local was_head = waiter ~= '' and redis.call('LINDEX', queue, 0) == waiter
    if waiter ~= '' then leave_line(queue, deadlines, waiter) end
    local token = bump_fence(fence, now, lease, mode)
    hold(k, owner, now, lease, description, token)
    -- Those behind us whose turn it is too (readers behind a reader) come in with us; if
    -- nobody does, the next one learns that it is first.
    if not hand_over(k) and was_head then
      wake_first(queue, deadlines, prefix, 'h', lease, now)
    end
    changed(k)
    return {1, token}
  end
  if waiter == '' then return {0, pttl, 0} end
  join_line(k, waiter, now, wait_ms, attempt, description)
  if pttl >= 0 then return {0, pttl, 1} end
  if pttl == -2 and first_deadline then return {0, math.max(first_deadline - now, 0), 1} end
  return {0, pttl, 0}
end
-- Read only when needed: a try on a held lock does without.
local now, held_pttl = nil, nil
if kind == 'none' then
  now = server_ms()
  -- Shared or permit holders may hold the key without its lock key.
  local modes, least = holders_of(k, -2)
  held_pttl = least
  if #modes > 0 and not mixes(mode, modes[1]) then return incompatible(k, waiter, modes[1]) end
  local my_turn, head = #modes == 0, redis.call('LINDEX', queue, 0)
  local member = head and (not fair) and waiter ~= ''
      and redis.call('HEXISTS', deadlines, waiter) == 1
  while my_turn and head and head ~= waiter and not member do
    if alive(deadlines, head, prefix, now) then
      if not mixes(mode, mode_of(head)) then return incompatible(k, waiter, mode_of(head)) end
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
    local token = bump_fence(fence, now, lease, mode)
    hold(k, owner, now, lease, description, token)
    if head and head ~= waiter then
      wake_first(queue, deadlines, prefix, 'h', lease, now)
    end
    -- On Redlock the token is settled on a majority after this (`RAISE_FENCE`): watchers are
    -- told then (`NOTIFY`), or they could read a term that is not the holder's yet.
    if fair then changed(k) end
    return {1, token}
  end
end
if waiter == '' then return {0, held_pttl or redis.call('PTTL', lock), 0} end
now = now or server_ms()
join_line(k, waiter, now, wait_ms, attempt, description)
-- Dead entries before us (crashed or cancelled waiters, a line reloaded after a restart)
-- must not keep us from being first, whose timer takes over a lock nobody releases.
local head = redis.call('LINDEX', queue, 0)
while head and head ~= waiter and not alive(deadlines, head, prefix, now) do
  leave_line(queue, deadlines, head)
  head = redis.call('LINDEX', queue, 0)
end
local pttl = held_pttl or redis.call('PTTL', lock)
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

/// KEYS: lock, fence, queue, deadlines, index, holders, watchers. ARGV: owner, channel
/// prefix, fair (1/0), the lock's key in the index, the prefix of the holders' own keys.
/// Returns 1 when released, 0 when the lock is not ours, -1 when the key holds another type.
/// A fair line gets the key handed over to those whose turn it now is in the same step; a key
/// nobody holds any more leaves the index.
const RELEASE: &str = r"
local owner, fair = ARGV[1], ARGV[3] == '1'
local k = lock_keys(ARGV[2], ARGV[5], ARGV[4])
local ok, holder = pcall(redis.call, 'GET', own_key(k, owner))
if not ok then return -1 end
if holder_id(holder) ~= owner then return 0 end
let_go(k, owner)
move_on(k, fair, mode_of(owner) == 'exclusive')
return 1
";

/// KEYS: the key holding our value (the lock key, or a shared or permit holder's own key),
/// fence, index, holders. ARGV: owner, ms. Returns 1 when extended, 0 when not ours, -1 for
/// a key of another type. The fence counter lives as long as the lock, plus `FENCE_GRACE`;
/// the index (and the holders set) at least as long as the lock.
const EXTEND: &str = r"
local ok, holder = pcall(redis.call, 'GET', KEYS[1])
if not ok then return -1 end
if holder_id(holder) ~= ARGV[1] then return 0 end
local ms = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ms)
if string.find(ARGV[1], '@', 1, true) then
  -- One of several holders: the others' leases may run longer.
  keep_at_least(KEYS[2], ms + FENCE_GRACE)
  keep_at_least(KEYS[4], ms)
else
  redis.call('PEXPIRE', KEYS[2], ms + FENCE_GRACE)
end
keep_index(KEYS[3], ms)
return 1
";

/// KEYS: for each lock to renew, the key holding our value, its fence counter, its index and
/// its holders set, in fours. ARGV: owner and ms for each, in pairs. Returns one 1 (renewed)
/// or 0 (no longer ours) per lock. The counter lives as long as the lock, plus
/// `FENCE_GRACE`; each index, touched once per call, at least as long as its longest lock.
const RENEW: &str = r"
local renewed, longest = {}, {}
for i = 1, #KEYS / 4 do
  local lock, fence, index, holders = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local owner = ARGV[2 * i - 1]
  local ok, holder = pcall(redis.call, 'GET', lock)
  if ok and holder_id(holder) == owner then
    local ms = tonumber(ARGV[2 * i])
    redis.call('PEXPIRE', lock, ms)
    if string.find(owner, '@', 1, true) then
      keep_at_least(fence, ms + FENCE_GRACE)
      keep_at_least(holders, ms)
    else
      redis.call('PEXPIRE', fence, ms + FENCE_GRACE)
    end
    if (longest[index] or 0) < ms then longest[index] = ms end
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
for index, ms in pairs(longest) do keep_index(index, ms) end
return renewed
";

/// KEYS: lock, fence, queue, deadlines, index, holders, watchers. ARGV: waiter id, channel
/// prefix, fair (1/0), the lock's key in the index, the prefix of the holders' own keys.
/// Leaves the line; on a fair line, those who waited only for the leaver (readers behind a
/// writer) are granted, and if the leaver was first, the turn is handed on; if the key was
/// handed to it meanwhile, gives it back at once.
const LEAVE: &str = r"
local waiter, fair = ARGV[1], ARGV[3] == '1'
local k = lock_keys(ARGV[2], ARGV[5], ARGV[4])
local ok, holder = pcall(redis.call, 'GET', own_key(k, waiter))
if ok and holder_id(holder) == waiter then
  let_go(k, waiter)
  leave_line(k.queue, k.deadlines, waiter)
  move_on(k, fair, mode_of(waiter) == 'exclusive')
  return 1
end
local was_first = redis.call('LINDEX', k.queue, 0) == waiter
leave_line(k.queue, k.deadlines, waiter)
if fair then
  if hand_over(k) then
    changed(k)
  elseif was_first then
    local _, pttl = holders_of(k)
    if pttl ~= -2 then wake_first(k.queue, k.deadlines, k.prefix, 'h', pttl, server_ms()) end
  end
elseif was_first then
  local pttl = redis.call('PTTL', k.lock)
  if pttl == -2 then
    lock_freed(k, fair)
  else
    wake_first(k.queue, k.deadlines, k.prefix, 'h', pttl, server_ms())
  end
end
return 1
";

/// KEYS: the key holding our value, watchers. ARGV: owner, the new owner description, the
/// wake channel prefix. Replaces the description if the holder is still `owner`, keeping
/// the acquisition time, the lease and the token; watchers hear of it. Returns 1 when
/// updated, 0 when not ours, -1 for a key of another type.
const UPDATE_OWNER: &str = r"
local replaced = replace_description(KEYS[1], ARGV[1], ARGV[2])
if replaced == 1 then notify_watchers(KEYS[2], ARGV[3]) end
return replaced
";

/// KEYS: watchers. ARGV: the wake channel prefix. Tells every watcher that the lock changed:
/// a Redlock grant, once its token is settled on a majority.
const NOTIFY: &str = r"
notify_watchers(KEYS[1], ARGV[1])
return 1
";

/// KEYS: watchers. ARGV: watcher id, how long the entry counts (ms). Lists a watcher, who
/// must already listen on its wake channel, until a message finds it gone or the set expires.
const WATCH: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
keep_at_least(KEYS[1], tonumber(ARGV[2]))
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

/// KEYS: lock, fence, queue, holders, and for a `list`, the index. ARGV: the prefix of the
/// holders' own keys, and for a `list`, the lock's key in the index. Returns `{holder's pttl
/// (-2 when free), fence counter, waiters, the lock's value ('' when free or not a string)}`;
/// for a key held in shared or permit mode, the oldest live holder's pttl, token and value.
/// Changes nothing, except that a `list` drops the index entry of a lock it finds free (one
/// whose holders expired without a release).
const INSPECT: &str = r"
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local pttl = redis.call('PTTL', KEYS[1])
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if not ok or not value then value = '' end
if pttl == -2 then
  local listed = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
  for i = 1, #listed, 2 do
    local left = redis.call('PTTL', ARGV[1] .. listed[i])
    if left ~= -2 then
      pttl, fence = left, tonumber(listed[i + 1])
      value = redis.call('GET', ARGV[1] .. listed[i]) or ''
      break
    end
  end
end
if pttl == -2 and KEYS[5] then redis.call('ZREM', KEYS[5], ARGV[2]) end
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
-- Replaces the description in the value of `key` if `owner` holds it, keeping the
-- acquisition time and the expiry: 1 replaced, 0 not ours, -1 a key of another type.
local function replace_description(key, owner, description)
  local ok, value = pcall(redis.call, 'GET', key)
  if not ok then return -1 end
  if holder_id(value) ~= owner then return 0 end
  local acquired = string.match(value, '^[^\n]*\n(%d+)\n')
  if not acquired then
    local t = redis.call('TIME')
    acquired = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
  redis.call('SET', key, owner .. '\n' .. acquired .. '\n' .. description, 'KEEPTTL')
  return 1
end
local function keep_at_least(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function keep_index(index, ms)
  keep_at_least(index, ms)
end
-- Tells every watcher of the lock (`wait_for_change`) that it changed, on its wake channel;
-- a watcher nobody listens for any more leaves the set.
local function notify_watchers(watchers, prefix)
  for _, watcher in ipairs(redis.call('SMEMBERS', watchers)) do
    if redis.call('PUBLISH', prefix .. watcher, watcher .. ' c 0') == 0 then
      redis.call('SREM', watchers, watcher)
    end
  end
end
";

/// The standard layout's scripts (`layout=redis-standard`), with the KEYS and ARGV of dlock's
/// layout's script of the same name, so that every call, on one instance or a Redlock quorum,
/// is made the same way in both layouts; they read and write only the lock key (KEYS[1]) and
/// its fence counter (KEYS[2]). The lock key is what redsync, node-redlock, rslock and
/// redis-py's `Lock` use: a string taken with `SET NX PX`, released by compare-and-delete,
/// extended by compare-and-pexpire; the fence counter is dlock's alone, bumped in the same
/// step as the `SET`.
mod standard {
    /// Extends the lock `lock` for `ms` if `owner` holds it, and its counter with it:
    /// 1 extended, 0 not ours, -1 a key of another type.
    pub(super) const EXTEND_HELD: &str = r"
local function extend_held(lock, fence, owner, ms)
  local ok, holder = pcall(redis.call, 'GET', lock)
  if not ok then return -1 end
  if holder_id(holder) ~= owner then return 0 end
  redis.call('PEXPIRE', lock, ms)
  keep_fence(fence, ms, 'exclusive')
  return 1
end
";

    /// `SET <key> <value> NX PX <lease>`; when it set the key, the token from the counter.
    /// Returns `{1, token}`, or `{0, the holder's pttl, 1 for a waiter}`: nothing tells a
    /// waiter of another library's release, so it looks again when the holder's lease runs
    /// out at the latest.
    pub(super) const ACQUIRE: &str = r"
local lock, fence = KEYS[1], KEYS[2]
local owner, lease, waiter, description = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[8]
local now = server_ms()
if redis.call('SET', lock, holder_value(owner, now, description), 'NX', 'PX', lease) then
  return {1, bump_fence(fence, now, lease, 'exclusive')}
end
local look_again = 0
if waiter ~= '' then look_again = 1 end
return {0, redis.call('PTTL', lock), look_again}
";

    /// Compare-and-delete; the counter then runs out after the grace.
    pub(super) const RELEASE: &str = r"
local ok, holder = pcall(redis.call, 'GET', KEYS[1])
if not ok then return -1 end
if holder_id(holder) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
fence_after_lock(KEYS[2])
return 1
";

    /// Compare-and-pexpire.
    pub(super) const EXTEND: &str = r"
return extend_held(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
";

    /// Compare-and-pexpire of every lock given, in fours of KEYS as dlock's `RENEW`.
    pub(super) const RENEW: &str = r"
local renewed = {}
for i = 1, #KEYS / 4 do
  local extended = extend_held(KEYS[4 * i - 3], KEYS[4 * i - 2], ARGV[2 * i - 1], tonumber(ARGV[2 * i]))
  renewed[i] = math.max(extended, 0)
end
return renewed
";

    /// The owner description replaced, owner-checked; a keyspace event (`set`) tells the
    /// watchers where the server publishes them.
    pub(super) const UPDATE_OWNER: &str = r"
return replace_description(KEYS[1], ARGV[1], ARGV[2])
";

    /// `{pttl, token, -1 (waiters unknown), value}`: the counter is the holder's token only
    /// when the holder is dlock's (its value has dlock's form); another library's holder has
    /// none (0).
    pub(super) const INSPECT: &str = r"
local pttl = redis.call('PTTL', KEYS[1])
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if not ok or not value then value = '' end
local token = 0
if string.match(value, '^[^\n]*\n%d+\n') then
  token = tonumber(redis.call('GET', KEYS[2]) or '0')
end
return {pttl, token, -1, value}
";
}

/// The compiled scripts of one layout (their SHA1 digests are computed once). A layout
/// without a line (the standard one) has no script to leave it, nor a watchers set to join
/// or notify: those calls do nothing there, and cost no round trip.
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) release: Script,
    pub(crate) extend: Script,
    pub(crate) renew: Script,
    pub(crate) leave: Option<Script>,
    pub(crate) raise_fence: Script,
    pub(crate) inspect: Script,
    pub(crate) update_owner: Script,
    pub(crate) watch: Option<Script>,
    pub(crate) notify: Option<Script>,
}

impl Scripts {
    /// Every script the layout has, to load when connecting.
    pub(crate) fn all(&self) -> Vec<&Script> {
        let mut all = vec![
            &self.acquire,
            &self.release,
            &self.extend,
            &self.renew,
            &self.raise_fence,
            &self.inspect,
            &self.update_owner,
        ];
        all.extend(
            [&self.leave, &self.watch, &self.notify]
                .into_iter()
                .flatten(),
        );
        all
    }
}

/// The scripts of `layout`, for a Redis Cluster (`cluster`: they wake waiters on sharded
/// channels, see [`sharded`]) or not, shared by every client of the process.
pub(crate) fn scripts(layout: Layout, cluster: bool) -> &'static Scripts {
    static ALL: [OnceLock<Scripts>; 4] = [const { OnceLock::new() }; 4];
    let at = 2 * usize::from(layout.is_foreign()) + usize::from(cluster);
    ALL[at].get_or_init(|| {
        let script = |library: &[&str], body: &str| {
            let text = script_text(library, body);
            Script::new(&if cluster { sharded(&text) } else { text })
        };
        layout_scripts(layout, script)
    })
}

/// The scripts of `layout`, each made by `script` from its helpers and body.
fn layout_scripts(layout: Layout, script: impl Fn(&[&str], &str) -> Script) -> Scripts {
    match layout {
        Layout::Dlock => {
            let with_helpers = |body: &str| script(&[HOLDER, FENCE, LINE], body);
            Scripts {
                acquire: with_helpers(ACQUIRE),
                release: with_helpers(RELEASE),
                extend: with_helpers(EXTEND),
                renew: with_helpers(RENEW),
                leave: Some(with_helpers(LEAVE)),
                raise_fence: with_helpers(RAISE_FENCE),
                inspect: Script::new(INSPECT),
                update_owner: with_helpers(UPDATE_OWNER),
                watch: Some(with_helpers(WATCH)),
                notify: Some(with_helpers(NOTIFY)),
            }
        }
        Layout::RedisStandard => {
            let with_helpers = |body: &str| script(&[HOLDER, FENCE, standard::EXTEND_HELD], body);
            Scripts {
                acquire: with_helpers(standard::ACQUIRE),
                release: with_helpers(standard::RELEASE),
                extend: with_helpers(standard::EXTEND),
                renew: with_helpers(standard::RENEW),
                leave: None,
                raise_fence: with_helpers(RAISE_FENCE),
                inspect: Script::new(standard::INSPECT),
                update_owner: with_helpers(standard::UPDATE_OWNER),
                watch: None,
                notify: None,
            }
        }
    }
}

/// A script's text for Redis Cluster: it wakes waiters with `SPUBLISH` and counts their
/// listeners with `PUBSUB SHARDNUMSUB`, on the node that owns the lock's slot (the wake
/// channels carry the lock's hash tag). A plain `PUBLISH` would be sent to every node of the
/// cluster, and `PUBSUB NUMSUB` counts the listeners of one node only: a waiter listening
/// elsewhere would count as gone.
fn sharded(text: &str) -> String {
    text.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
        .replace("'PUBSUB', 'NUMSUB'", "'PUBSUB', 'SHARDNUMSUB'")
}

/// The text of the script of `body`: `FENCE_GRACE`, then the helper functions of `library`
/// that `body` names, directly or through other helpers, in the library's order (a Lua
/// local must be defined before the functions that call it), then `body`.
///
/// Only those, because Redis runs a script's whole text on every call and every
/// `local function` makes a closure each time (issue 14; what it saves is in
/// `notes/performance.md`). Which helpers a body needs is found from the text, so a helper
/// a script starts to call is never left out by hand.
fn script_text(library: &[&str], body: &str) -> String {
    let helpers: Vec<(&str, String)> = library.iter().flat_map(|part| helpers_of(part)).collect();
    let mut needed = vec![false; helpers.len()];
    let mut unread = vec![body.to_owned()];
    while let Some(text) = unread.pop() {
        for (i, (name, source)) in helpers.iter().enumerate() {
            if !needed[i] && mentions(&text, name) {
                needed[i] = true;
                unread.push(source.clone());
            }
        }
    }
    let mut text = format!("local FENCE_GRACE = {}\n", FENCE_GRACE.as_millis());
    for ((_, source), _) in helpers.iter().zip(&needed).filter(|(_, needed)| **needed) {
        text.push_str(source);
    }
    text.push('\n');
    text.push_str(body);
    text
}

/// The helper functions of a block of them, each with its name: a helper runs from its
/// `local function` line to the next one (comments above a helper ride with the one before).
fn helpers_of(block: &str) -> Vec<(&str, String)> {
    let mut helpers: Vec<(&str, String)> = Vec::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("local function ") {
            let name = rest.split('(').next().unwrap_or(rest).trim();
            helpers.push((name, String::new()));
        }
        if let Some((_, source)) = helpers.last_mut() {
            source.push_str(line);
            source.push('\n');
        }
    }
    helpers
}

/// Whether `text` names `name` as a whole word (not as a field: `x.name`, `x:name`). A local
/// variable of the same name counts too, which only ever adds a helper.
fn mentions(text: &str, name: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(|c| is_word(c) || c == '.' || c == ':') && !after.is_some_and(is_word)
    })
}

#[cfg(test)]
mod tests {
    use dlock_core::{turn, LockMode, Turn};

    use super::*;

    /// Calls the scripts' `turn` with ARGV = the mode, then the modes ahead.
    const TURN_CASE: &str = r"
local ahead = {}
for i = 2, #ARGV do ahead[#ahead + 1] = ARGV[i] end
local verdict, found = turn(ARGV[1], ahead)
return {verdict, found or ''}
";

    /// A script carries the helpers its body calls and those they call, and no others.
    #[test]
    fn a_script_carries_only_the_helpers_it_calls() {
        let text = script_text(&[HOLDER, FENCE, LINE], TURN_CASE);
        for called in ["turn", "mixes", "permits_of"] {
            assert!(
                text.contains(&format!("local function {called}(")),
                "{called}"
            );
        }
        assert!(!text.contains("local function hand_over("), "{text}");
        let extend = script_text(&[HOLDER, FENCE, LINE], EXTEND);
        assert!(!extend.contains("local function turn("), "{extend}");
        assert!(mentions("x = turn(a)", "turn"));
        assert!(!mentions("x = k.turn + returned", "turn"));
    }

    /// On a cluster every script wakes and counts waiters on sharded channels only: one
    /// plain `PUBLISH` or `NUMSUB` left would wake nobody, or count a live waiter as gone.
    #[test]
    fn cluster_scripts_use_sharded_channels_only() {
        let texts = std::cell::RefCell::new(Vec::new());
        for layout in [Layout::Dlock, Layout::RedisStandard] {
            layout_scripts(layout, |library, body| {
                texts.borrow_mut().push(script_text(library, body));
                Script::new(body)
            });
        }
        let texts = texts.into_inner();
        let plain = |text: &str| {
            text.matches("'PUBLISH'").count()
                + text.matches("\"PUBLISH\"").count()
                + text.matches("'NUMSUB'").count()
                + text.matches("\"NUMSUB\"").count()
        };
        assert!(texts.iter().map(|t| plain(t)).sum::<usize>() >= 3);
        for text in &texts {
            let sharded = sharded(text);
            assert_eq!(plain(&sharded), 0, "{sharded}");
            assert_eq!(
                sharded.matches("SPUBLISH").count() + sharded.matches("SHARDNUMSUB").count(),
                plain(text),
            );
        }
    }

    /// The server's copy of the rule says what `dlock_core::turn` says, for every mode
    /// against every line of up to three contenders ahead.
    #[tokio::test]
    async fn the_scripts_turn_rule_is_dlock_cores() {
        let server = dlock_test_servers::shared_redis();
        let client = redis::Client::open(server.url.as_str()).expect("client");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let script = Script::new(&script_text(&[HOLDER, FENCE, LINE], TURN_CASE));
        let modes = [
            LockMode::Exclusive,
            LockMode::Shared,
            LockMode::Permit(1),
            LockMode::Permit(2),
            LockMode::Permit(3),
        ];
        let mut lines: Vec<Vec<LockMode>> = vec![vec![]];
        for length in 1..=3 {
            let shorter: Vec<Vec<LockMode>> = lines
                .iter()
                .filter(|l| l.len() == length - 1)
                .cloned()
                .collect();
            for line in shorter {
                for mode in modes {
                    let mut longer = line.clone();
                    longer.push(mode);
                    lines.push(longer);
                }
            }
        }
        for mode in modes {
            for ahead in &lines {
                let mut call = script.prepare_invoke();
                call.arg(mode.label());
                for other in ahead {
                    call.arg(other.label());
                }
                let (verdict, found): (String, String) =
                    call.invoke_async(&mut connection).await.expect("turn");
                let expected = match turn("k", mode, ahead) {
                    Ok(Turn::Granted) => ("granted".to_owned(), String::new()),
                    Ok(Turn::WaitFor(_) | Turn::WaitForAny) => ("wait".to_owned(), String::new()),
                    Err(dlock_core::LockError::IncompatibleMode { found, .. }) => {
                        ("incompatible".to_owned(), found.label())
                    }
                    Err(other) => panic!("{other}"),
                };
                assert_eq!((verdict, found), expected, "{mode} behind {ahead:?}");
            }
        }
    }
}
