-- wrk script: counts responses per worker (the x-pid header) and non-2xx responses,
-- and prints one parseable line at the end:
--
--   BENCH_RESULT {"requests": N, "duration_us": N, "non2xx": N, "errors": {...},
--                 "latency_us": {"p50": N, ...}, "pids": {"1234": N, ...}}
--
-- Usage: wrk -t1 -c64 -d10s -s bench/count.lua http://127.0.0.1:8000/fast [-- ARGS]
-- ARGS:
--   close  send "Connection: close" (a new connection per request), as bench/close.lua
--   timed  also time every request itself and add "raw_latency_us": wrk's own
--          percentiles (latency_us) include its correction for coordinated omission,
--          these do not. Each request carries its start time in an x-echo header,
--          which bench/app.py sends back; needs LuaJIT's ffi (as Debian's wrk has).
--   delay=MS   wait MS milliseconds before each request on a connection (think time).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local now_us = nil
local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
   ffi.cdef[[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
      int clock_gettime(int clk_id, bench_timespec_t *tp);
   ]]
   local ts = ffi.new("bench_timespec_t")
   now_us = function()
      ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
   end
end

local BUCKET_US = 10

function init(args)
   -- Per-thread state, read back in done() through thread:get().
   pids = {}
   non2xx = 0
   timed = {}      -- latency bucket (BUCKET_US wide) -> count
   timed_n = 0
   for _, arg in ipairs(args) do
      if arg == "close" then
         wrk.headers["Connection"] = "close"
      elseif arg == "timed" and now_us then
         -- Defining request() makes wrk ask for every request as it starts writing it.
         function request()
            wrk.headers["x-echo"] = string.format("%d", now_us())
            return wrk.format()
         end
      elseif string.sub(arg, 1, 6) == "delay=" then
         local ms = tonumber(string.sub(arg, 7)) or 0
         function delay()
            return ms
         end
      end
   end
end

local function header(headers, name)
   local value = headers[name]
   if value then
      return value
   end
   for key, v in pairs(headers) do
      if string.lower(key) == name then
         return v
      end
   end
   return nil
end

function response(status, headers, body)
   local pid = header(headers, "x-pid") or "none"
   pids[pid] = (pids[pid] or 0) + 1
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
   if request then
      local sent = tonumber(header(headers, "x-echo") or "")
      if sent then
         local bucket = math.floor((now_us() - sent) / BUCKET_US)
         timed[bucket] = (timed[bucket] or 0) + 1
         timed_n = timed_n + 1
      end
   end
end

local function quote(s)
   return '"' .. string.gsub(tostring(s), '[%c"\\]', "") .. '"'
end

local function object(entries)
   local parts = {}
   for _, kv in ipairs(entries) do
      table.insert(parts, quote(kv[1]) .. ": " .. kv[2])
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

local PERCENTILES = {50, 75, 90, 99, 99.9, 99.99}

local function raw_percentiles(histogram, n)
   local buckets = {}
   for bucket, _ in pairs(histogram) do
      table.insert(buckets, bucket)
   end
   table.sort(buckets)
   local entries = {{"count", string.format("%d", n)}}
   for _, p in ipairs(PERCENTILES) do
      local rank = math.max(1, math.ceil(p / 100 * n))
      local seen, value = 0, 0
      for _, bucket in ipairs(buckets) do
         seen = seen + histogram[bucket]
         value = bucket * BUCKET_US
         if seen >= rank then
            break
         end
      end
      table.insert(entries, {"p" .. tostring(p), string.format("%d", value)})
   end
   if #buckets > 0 then
      table.insert(entries, {"max", string.format("%d", buckets[#buckets] * BUCKET_US)})
   end
   return object(entries)
end

function done(summary, latency, requests)
   local total_pids = {}
   local total_non2xx = 0
   local histogram, timed_total = {}, 0
   for _, thread in ipairs(threads) do
      local counts = thread:get("pids") or {}
      for pid, n in pairs(counts) do
         total_pids[pid] = (total_pids[pid] or 0) + n
      end
      total_non2xx = total_non2xx + (thread:get("non2xx") or 0)
      for bucket, n in pairs(thread:get("timed") or {}) do
         histogram[bucket] = (histogram[bucket] or 0) + n
      end
      timed_total = timed_total + (thread:get("timed_n") or 0)
   end
   local pid_entries = {}
   for pid, n in pairs(total_pids) do
      table.insert(pid_entries, {pid, string.format("%d", n)})
   end
   table.sort(pid_entries, function(a, b) return a[1] < b[1] end)
   local e = summary.errors
   local errors = object({
      {"connect", e.connect}, {"read", e.read}, {"write", e.write},
      {"status", e.status}, {"timeout", e.timeout},
   })
   local lat = {}
   for _, p in ipairs(PERCENTILES) do
      table.insert(lat, {"p" .. tostring(p), string.format("%d", latency:percentile(p))})
   end
   table.insert(lat, {"min", string.format("%d", latency.min)})
   table.insert(lat, {"max", string.format("%d", latency.max)})
   table.insert(lat, {"mean", string.format("%.1f", latency.mean)})
   local entries = {
      {"requests", string.format("%d", summary.requests)},
      {"duration_us", string.format("%d", summary.duration)},
      {"bytes", string.format("%d", summary.bytes)},
      {"non2xx", string.format("%d", total_non2xx)},
      {"errors", errors},
      {"latency_us", object(lat)},
      {"pids", object(pid_entries)},
   }
   if timed_total > 0 then
      table.insert(entries, {"raw_latency_us", raw_percentiles(histogram, timed_total)})
   end
   io.write("BENCH_RESULT ", object(entries), "\n")
end
