-- wrk script of the accept benchmark (bench/accept.py runs it; see bench/README.md).
--
-- Every connection POSTs the same body, rotating through the bearer tokens of BENCH_TOKENS_FILE
-- (one per line). After BENCH_WINDOW seconds a thread stops POSTing: its connections send
-- GET /health instead (which creates nothing) until every POST it sent has been answered, and
-- then the thread stops. So no POST is ever cut off in flight, and the 202s it counts can be
-- compared exactly with the rows in the database. Run wrk with -d at least BENCH_WINDOW + 1.
--
-- Environment: BENCH_BODY_FILE, BENCH_TOKENS_FILE, BENCH_PATH, BENCH_WINDOW (seconds),
-- BENCH_OUT (JSON summary written by done()), BENCH_IDS (the ids of the 202s, one per line).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local function now()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function read_file(name)
   local f = assert(io.open(name, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

local window = tonumber(os.getenv("BENCH_WINDOW") or "10")
local path = os.getenv("BENCH_PATH") or "/v0.1/dispatch"

-- per thread (each wrk thread runs its own copy of this script); globals so done() can read them
posts = {}          -- the formatted POST requests, one per token
health = nil        -- the formatted GET /health
statuses = {}       -- status -> count, POST answers only
ids = {}            -- the ids of the 202s, in order
nids = 0
sent = 0            -- POSTs written
answered = 0        -- POSTs answered
in_window = 0       -- POSTs answered before the deadline
health_answers = 0  -- GET /health answered while draining
started = -1        -- monotonic time of the first request
finished = -1       -- monotonic time the thread stopped (every POST answered)
skip_first = 0      -- set to 1 by setup() on the thread whose request() wrk calls once to check it
local deadline = nil
local index = 0

function init(args)
   local body = read_file(os.getenv("BENCH_BODY_FILE"))
   for token in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
      if #token > 0 then
         posts[#posts + 1] = wrk.format("POST", path, {
            ["Host"] = wrk.headers["Host"],
            ["Content-Type"] = "application/json",
            ["Authorization"] = "Bearer " .. token,
         }, body)
      end
   end
   assert(#posts > 0, "no token in BENCH_TOKENS_FILE")
   health = wrk.format("GET", "/health", { ["Host"] = wrk.headers["Host"] })
end

function request()
   if skip_first == 1 then -- wrk's own check of the script, before any connection: not sent
      skip_first = 0
      return posts[1]
   end
   local t = now()
   if deadline == nil then
      started = t
      deadline = t + window
   end
   if t < deadline then
      sent = sent + 1
      index = index % #posts + 1
      return posts[index]
   end
   return health
end

function response(status, headers, body)
   local t = now()
   if status == 200 then
      health_answers = health_answers + 1
   else
      answered = answered + 1
      if t < deadline then
         in_window = in_window + 1
      end
      statuses[status] = (statuses[status] or 0) + 1
      if status == 202 then
         local id = string.match(body, '_uuid":"([^"]+)"')
         if id then
            nids = nids + 1
            ids[nids] = id
         end
      end
   end
   if t >= deadline and answered >= sent and finished < 0 then
      finished = t
      wrk.thread:stop()
   end
end

-- main state: collect every thread's counts
local threads = {}

function setup(thread)
   if #threads == 0 then
      thread:set("skip_first", 1)
   end
   threads[#threads + 1] = thread
end

function done(summary, latency, requests)
   local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
   local id_file = assert(io.open(os.getenv("BENCH_IDS"), "w"))
   local parts = {}
   local status_parts = {}
   local totals = { sent = 0, answered = 0, in_window = 0, health_answers = 0 }
   local all = {}
   local first, last, drained = nil, nil, true
   for _, thread in ipairs(threads) do
      for key, _ in pairs(totals) do
         totals[key] = totals[key] + thread:get(key)
      end
      for status, count in pairs(thread:get("statuses")) do
         all[status] = (all[status] or 0) + count
      end
      for _, id in ipairs(thread:get("ids")) do
         id_file:write(id, "\n")
      end
      local s, f = thread:get("started"), thread:get("finished")
      if s >= 0 and (first == nil or s < first) then first = s end
      if f < 0 then drained = false elseif last == nil or f > last then last = f end
   end
   id_file:close()
   for status, count in pairs(all) do
      status_parts[#status_parts + 1] = string.format('"%d":%d', status, count)
   end
   for key, value in pairs(totals) do
      parts[#parts + 1] = string.format('"%s":%d', key, value)
   end
   local errors = summary.errors
   out:write("{", table.concat(parts, ","),
      string.format(',"statuses":{%s}', table.concat(status_parts, ",")),
      string.format(',"drained":%s', drained and "true" or "false"),
      string.format(',"window_s":%f', window),
      string.format(',"drain_s":%f', (drained and first and last) and (last - first - window) or -1),
      string.format(',"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}',
         errors.connect, errors.read, errors.write, errors.timeout),
      string.format(',"latency_us":{"mean":%f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}',
         latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
         latency:percentile(99), latency:percentile(99.9)),
      "}\n")
   out:close()
end
