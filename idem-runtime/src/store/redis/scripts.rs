//! The Lua scripts of the Redis store: one per operation, each touching one key (on a cluster,
//! `begin` also adds to an index set in the same slot, so a cluster never sees a cross-slot
//! call), and every one reading the server's clock with `TIME`.
//!
//! A record is `state (1 byte) ‖ fingerprint (32 raw bytes) ‖ token (16 digits) ‖ attempt
//! (6 digits) ‖ lease end (16 digits, server ms) ‖ response`, where the state is `p` (in progress),
//! `t` (in progress, tentative: gone once its lease lapsed, see `Store::begin_tentative`), `c`
//! (completed) or `r` (released: free, kept only to count attempts).

/// Where the response starts in a record (Lua's 1-based offsets below are `HEADER + 1` = 72).
pub(super) const HEADER: usize = 1 + 32 + 16 + 6 + 16;
pub(super) const TOKEN: std::ops::Range<usize> = 33..49;
pub(super) const ATTEMPT: std::ops::Range<usize> = 49..55;

/// `now`: the server's clock in ms; `token`: its clock in µs, 16 digits.
const CLOCK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

const BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
local attempt = 1
if v then
  local st = string.sub(v, 1, 1)
  if st == 'c' then
    if string.sub(v, 2, 33) ~= ARGV[1] then return {'M'} end
    return {'C', string.sub(v, 72)}
  end
  if st == 'p' or st == 't' then
    local left = tonumber(string.sub(v, 56, 71)) - now
    if left > 0 then
      if string.sub(v, 2, 33) ~= ARGV[1] then return {'M'} end
      return {'P', left}
    end
  end
  -- A tentative record whose lease lapsed is as if it had never been. Six digits: clamped, so
  -- that a key retried a million times keeps a well-formed record.
  if st ~= 't' then attempt = math.min(tonumber(string.sub(v, 50, 55)) + 1, 999999) end
end
-- The server's clock in µs, but always past the key's previous token: tokens grow per key even
-- after a failover to a replica whose clock is behind, or a clock step.
local token = t[1] .. string.format('%06d', tonumber(t[2]))
if v then
  local previous = tonumber(string.sub(v, 34, 49))
  if previous and previous >= tonumber(token) then token = string.format('%016d', previous + 1) end
end
local lease = tonumber(ARGV[2])
-- ARGV[4] = 't' from `begin_tentative`: only a first attempt is made tentative.
local state = 'p'
if attempt == 1 and ARGV[4] == 't' then state = 't' end
redis.call('SET', KEYS[1],
  state .. ARGV[1] .. token .. string.format('%06d', attempt) .. string.format('%016d', now + lease),
  'PX', math.max(lease, tonumber(ARGV[3])))
-- On a cluster: the record joins its principal's index in its own slot (see index.rs).
if KEYS[2] then
  redis.call('SADD', KEYS[2], KEYS[1])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
end
return {'A', token, attempt}
";

/// The fence shared by complete, release and renew: the record must be in progress and held by
/// ARGV[1]. A lease that ran out while nobody took the key over still belongs to its holder (a
/// takeover hands out a new token, which this check refuses), so a late renewal re-extends it
/// and a late completion is kept instead of running the operation again.
const HELD: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
local held = string.sub(v, 1, 1)
if held ~= 'p' and held ~= 't' then return 0 end
";

/// A completion sent again by the token that already completed the record (its answer was lost,
/// or its replication was not acknowledged) succeeds again, writing nothing.
const ALREADY_COMPLETED: &str = r"
local done = redis.call('GET', KEYS[1])
if done and string.sub(done, 1, 1) == 'c' and string.sub(done, 34, 49) == ARGV[1] then return 1 end
";

const COMPLETE_TAIL: &str = r"
redis.call('SET', KEYS[1], 'c' .. string.sub(v, 2, 71) .. ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', 'idem:done', KEYS[1])
return 1
";

/// A tentative record released is as if it had never been: it goes.
const RELEASE_TAIL: &str = r"
if held == 't' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], 'r' .. string.sub(v, 2, 71), 'KEEPTTL')
end
redis.call('PUBLISH', 'idem:done', KEYS[1])
return 1
";

/// The holder's record goes (see `Store::discard`).
const DISCARD_TAIL: &str = r"
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', 'idem:done', KEYS[1])
return 1
";

/// The lease ends ARGV[2] ms from now, and the record lives at least as long; its state
/// becomes `state`: renew keeps the held one, confirm makes a tentative record an operation's
/// (see `Store::confirm`).
const LEASE_TAIL: &str = r"
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], state .. string.sub(v, 2, 55) .. string.format('%016d', now + lease), 'KEEPTTL')
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
";

const PURGE: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', 'idem:done', KEYS[1])
redis.call('PUBLISH', 'idem:purged', KEYS[1])
return n
";

const GET: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local st = string.sub(v, 1, 1)
if st == 'c' then return {v, redis.call('PTTL', KEYS[1])} end
if st == 'p' or st == 't' then
  local left = tonumber(string.sub(v, 56, 71)) - now
  if left > 0 then return {v, left} end
end
return false
";

/// A script with its SHA-1, sent as `EVALSHA` and resent as `EVAL` on `NOSCRIPT`.
pub(super) struct Script {
    pub(super) code: String,
    pub(super) sha: String,
}

impl Script {
    pub(super) fn new(code: String) -> Self {
        let sha = redis::Script::new(&code).get_hash().to_string();
        Script { code, sha }
    }
}

pub(super) struct Scripts {
    pub(super) begin: Script,
    pub(super) complete: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    pub(super) confirm: Script,
    pub(super) discard: Script,
    pub(super) get: Script,
    pub(super) purge: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            begin: Script::new(format!("{CLOCK}{BEGIN}")),
            complete: Script::new(format!("{CLOCK}{ALREADY_COMPLETED}{HELD}{COMPLETE_TAIL}")),
            release: Script::new(format!("{CLOCK}{HELD}{RELEASE_TAIL}")),
            renew: Script::new(format!("{CLOCK}{HELD}local state = held{LEASE_TAIL}")),
            confirm: Script::new(format!("{CLOCK}{HELD}local state = 'p'{LEASE_TAIL}")),
            discard: Script::new(format!("{CLOCK}{HELD}{DISCARD_TAIL}")),
            get: Script::new(format!("{CLOCK}{GET}")),
            purge: Script::new(PURGE.into()),
        }
    }

    pub(super) fn all(&self) -> [&Script; 8] {
        [
            &self.begin,
            &self.complete,
            &self.release,
            &self.renew,
            &self.confirm,
            &self.discard,
            &self.get,
            &self.purge,
        ]
    }
}
