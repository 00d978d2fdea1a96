--[[
bench/run.lua -- the sockrun benchmark driver (`make bench`; see bench/README.md).

Runs each workload against each server (C baseline, sockrun, luv, Node.js,
redis-server for W4), BENCH_RUNS times, interleaved; the server is pinned to
CPU 0 and the load generator to CPU 1. Prints a markdown table and writes it
to BENCH_OUT (default bench/results.md). Runs under stock lua5.4 from the
repository root; needs no Lua library.

Environment (defaults in brackets):
  BENCH_RUNS [3]          runs of every measurement; median and spread
  BENCH_DURATION [5]      seconds of load per W1/W2/W3 measurement
  BENCH_WARMUP [1]        seconds of load before each W1/W2/W3 measurement
  BENCH_REQUESTS [200000] redis-benchmark -n (50000 when BENCH_DURATION < 5)
  BENCH_CONNS [10000]     idle connections for W5
  BENCH_ONLY              workloads to run, e.g. "W1,W4" (W3 covers both echo rows)
  BENCH_SERVERS           servers to run, e.g. "c,sockrun" (default: all found)
  BENCH_STRACE [1]        count syscalls per W1 request with strace -c -f (0: skip)
  BENCH_OUT               where to write the table [bench/results.md]
  BENCH_SOCKRUN_BASE      an earlier sockrun binary, measured as server "base"
  BENCH_SOCKRUN_BASE_SCRIPTS  the scripts it runs [bench/sockrun]
  SOCKRUN [build/sockrun], BENCH_BIN [build/bench] (the C programs),
  BENCH_LOGS [build/bench/logs]
]]

local getenv = os.getenv
local fmt = string.format

local function envnum(name, default)
  local v = tonumber(getenv(name) or "")
  return v or default
end

local RUNS = math.max(1, math.floor(envnum("BENCH_RUNS", 3)))
local DURATION = math.max(1, math.floor(envnum("BENCH_DURATION", 5)))
local WARMUP = math.max(0, math.floor(envnum("BENCH_WARMUP", 1)))
local REQUESTS = math.floor(envnum("BENCH_REQUESTS", DURATION >= 5 and 200000 or 50000))
local CONNS = math.floor(envnum("BENCH_CONNS", 10000))
local STRACE = getenv("BENCH_STRACE") ~= "0"
local OUT = getenv("BENCH_OUT") or "bench/results.md"
local SOCKRUN_BUILT = getenv("SOCKRUN") or "build/sockrun"
local BIN = getenv("BENCH_BIN") or "build/bench"
-- The binary under test is copied first (the Lua side is built into it), so
-- that a rebuild during the run does not change it half-way.
local SOCKRUN = BIN .. "/sockrun-under-test"
local LOGS = getenv("BENCH_LOGS") or "build/bench/logs"
local BUGS = "/tmp/sockrun-bugs"

local function set_of(list)
  if not list or list == "" then return nil end
  local t = {}
  for w in list:gmatch("[^,%s]+") do t[w:upper()] = true end
  return t
end
local ONLY = set_of(getenv("BENCH_ONLY"))
local SERVERS_ONLY = set_of(getenv("BENCH_SERVERS"))

-- ---------------------------------------------------------------------------
-- Shell and /proc helpers

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return out
end

local function sh(cmd) return os.execute(cmd) == true end

local function readfile(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function writefile(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end

local function now() return tonumber(capture("date +%s.%N")) end
local function sleep(s) os.execute("sleep " .. s) end
local function have(cmd) return sh("command -v " .. cmd .. " >/dev/null 2>&1") end
local function trim(s) return (s or ""):gsub("^%s+", ""):gsub("%s+$", "") end
local function firstline(s) return trim((s or ""):match("[^\n]*")) end

local CLK_TCK = tonumber(capture("getconf CLK_TCK")) or 100
local NPROC = tonumber(capture("nproc")) or 1
local SERVER_CPU, LOAD_CPU = 0, NPROC >= 2 and 1 or 0

-- Fields of /proc/PID/stat after the command name: [1] is the state,
-- [12]/[13] utime/stime, [14]/[15] cutime/cstime (all in clock ticks).
local function stat_fields(pid)
  local s = readfile("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local rest = s:match("%) (.*)$")
  local t = {}
  for w in rest:gmatch("%S+") do t[#t + 1] = w end
  return t
end

local function cpu_seconds(pid)
  local t = stat_fields(pid)
  if not t then return nil end
  local total = (tonumber(t[12]) + tonumber(t[13])) / CLK_TCK
  -- a `sockrun -w N` parent: add its live workers
  local kids = readfile(fmt("/proc/%d/task/%d/children", pid, pid)) or ""
  for kid in kids:gmatch("%d+") do
    local k = stat_fields(tonumber(kid))
    if k then total = total + (tonumber(k[12]) + tonumber(k[13])) / CLK_TCK end
  end
  return total
end

local SELF = tonumber(readfile("/proc/self/stat"):match("^(%d+)"))

-- CPU time of our finished (waited-for) children: the load generators.
local function children_cpu()
  local t = stat_fields(SELF)
  return (tonumber(t[14]) + tonumber(t[15])) / CLK_TCK
end

local function alive(pid)
  local t = stat_fields(pid)
  return t ~= nil and t[1] ~= "Z" and t[1] ~= "X"
end

local function rss_kib(pid)
  local s = readfile("/proc/" .. pid .. "/status")
  return s and tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- Is something listening on 127.0.0.1:port (or any address)?
local function listening(port)
  local hex = fmt("%04X", port)
  for _, f in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    local s = readfile(f) or ""
    for l, st in s:gmatch("%s*%d+: %x+:(%x%x%x%x) %x+:%x+ (%x%x)") do
      if l == hex and st == "0A" then return true end
    end
  end
  return false
end

local function port_in_use(port)
  local hex = fmt("%04X", port)
  for _, f in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    local s = readfile(f) or ""
    for l in s:gmatch("%s*%d+: %x+:(%x%x%x%x) ") do
      if l == hex then return true end
    end
  end
  return false
end

-- Server ports stay below the ephemeral range (32768 and up).
local next_port = 21000 + SELF % 1000 * 10
local function free_port()
  while true do
    next_port = next_port + 1
    if next_port > 32000 then next_port = 20000 end
    if not port_in_use(next_port) then return next_port end
  end
end

-- Processes we started, by PID, so that every exit path stops them.
local started = {}

-- Start cmd in the background pinned to cpu, output to log, with the open
-- files limit raised to the hard limit. A watchdog stops it if this driver
-- dies first (e.g. on Ctrl-C). Returns the PID.
local function start(cmd, log, cpu)
  local line = fmt(
    "ulimit -n $(ulimit -Hn) 2>/dev/null; " ..
    "exec taskset -c %s %s >%s 2>&1 </dev/null & p=$!; echo $p; " ..
    "(while kill -0 %d 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 1; done; " ..
    "kill -0 %d 2>/dev/null || kill $p 2>/dev/null) >/dev/null 2>&1 </dev/null &",
    tostring(cpu), cmd, q(log), SELF, SELF)
  local pid = tonumber(capture(line))
  assert(pid, "could not start: " .. cmd)
  started[pid] = true
  return pid
end

local function stop(pid, sig)
  if not pid or not started[pid] then return end
  started[pid] = nil
  if not alive(pid) then return end
  sh(fmt("kill -%s %d 2>/dev/null", sig or "TERM", pid))
  for _ = 1, 30 do
    if not alive(pid) then return end
    sleep(0.1)
  end
  sh(fmt("kill -KILL %d 2>/dev/null", pid))
  for _ = 1, 20 do
    if not alive(pid) then return end
    sleep(0.1)
  end
end

local function stop_all()
  for pid in pairs(started) do stop(pid) end
end

local function wait_listening(pid, port, seconds)
  local deadline = now() + seconds
  while now() < deadline do
    if listening(port) then return true end
    if not alive(pid) then return false end
    sleep(0.05)
  end
  return false
end

-- ---------------------------------------------------------------------------
-- Servers

sh("mkdir -p " .. q(BIN))
if not sh(fmt("cp %s %s 2>/dev/null", q(SOCKRUN_BUILT), q(SOCKRUN))) then
  io.stderr:write("bench: no sockrun binary at " .. SOCKRUN_BUILT .. " (make all)\n")
end

local SERVERS = {
  { id = "c", name = "C (libuv)", kinds = { http = true, echo = true, resp = true },
    cmd = function(kind, port) return fmt("%s/cserver %s %d", BIN, kind, port) end,
    need = BIN .. "/cserver" },
  { id = "sockrun", name = "sockrun", kinds = { http = true, echo = true, resp = true },
    cmd = function(kind, port) return fmt("%s bench/sockrun/%s.lua %d", SOCKRUN, kind, port) end,
    need = SOCKRUN },
  -- `sockrun -w 2`: two workers sharing the port, on both cores (reported,
  -- no target: on a 2-core machine the load generator shares a core). Its
  -- busy figure counts both workers, in cores.
  { id = "w2", name = "sockrun -w 2", kinds = { http = true }, cpu = "0,1", cores = 2,
    cmd = function(kind, port) return fmt("%s -w 2 bench/sockrun/%s.lua %d", SOCKRUN, kind, port) end,
    need = SOCKRUN },
  -- BENCH_SOCKRUN_BASE=path: an earlier sockrun build, measured in the same
  -- run as the current one, so a change is judged before/after side by side.
  -- It runs that build's own scripts when BENCH_SOCKRUN_BASE_SCRIPTS names
  -- their directory (an API change may have changed the scripts too).
  { id = "base", name = "sockrun (base)", kinds = { http = true, echo = true, resp = true },
    cmd = function(kind, port)
      return fmt("%s %s/%s.lua %d", BIN .. "/sockrun-base",
                 q(getenv("BENCH_SOCKRUN_BASE_SCRIPTS") or "bench/sockrun"), kind, port)
    end,
    check = getenv("BENCH_SOCKRUN_BASE")
      and fmt("cp %s %s/sockrun-base", q(getenv("BENCH_SOCKRUN_BASE")), q(BIN)) or "false" },
  { id = "luv", name = "luv", kinds = { http = true, echo = true, resp = true },
    cmd = function(kind, port) return fmt("lua5.4 bench/luv/%s.lua %d", kind, port) end,
    check = "lua5.4 -e 'require \"luv\"' >/dev/null 2>&1" },
  { id = "node", name = "Node.js", kinds = { http = true, echo = true, resp = true },
    cmd = function(kind, port) return fmt("node bench/node/%s.js %d", kind, port) end,
    check = "command -v node >/dev/null 2>&1" },
  { id = "redis", name = "redis-server", kinds = { resp = true },
    cmd = function(_, port)
      return fmt("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no " ..
                 "--protected-mode no --daemonize no --dir %s", port, q(LOGS))
    end,
    check = "command -v redis-server >/dev/null 2>&1" },
}
local SERVER_BY_ID = {}
for _, s in ipairs(SERVERS) do
  SERVER_BY_ID[s.id] = s
  s.available = (not s.need or sh("test -x " .. q(s.need))) and
                (not s.check or sh(s.check))
  if SERVERS_ONLY and not SERVERS_ONLY[s.id:upper()] then s.available = false end
end

-- What each kind of server must answer before it is measured.
local HTTP_HEAD = "HTTP/1.1 200 OK\\r\\nContent-Length: 13\\r\\nContent-Type: text/plain\\r\\n"
local HTTP_KEEP = HTTP_HEAD .. "\\r\\nHello, World!"
local HTTP_CLOSE = HTTP_HEAD .. "Connection: close\\r\\n\\r\\nHello, World!"
local PROBES = {
  http = {
    { "", "GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nGET /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
      HTTP_KEEP .. HTTP_KEEP },
    { "-e", "GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n", HTTP_CLOSE },
  },
  echo = { { "", "hello, echo\\r\\n", "hello, echo\\r\\n" } },
  resp = {
    { "", "PING\\r\\n*1\\r\\n$4\\r\\nPING\\r\\n*3\\r\\n$3\\r\\nSET\\r\\n$16\\r\\nkey:__rand_int__\\r\\n" ..
          "$3\\r\\nxxx\\r\\n*2\\r\\n$3\\r\\nGET\\r\\n$16\\r\\nkey:__rand_int__\\r\\n" ..
          "*2\\r\\n$3\\r\\nGET\\r\\n$7\\r\\nmissing\\r\\n",
      "+PONG\\r\\n+PONG\\r\\n+OK\\r\\n$3\\r\\nxxx\\r\\n$-1\\r\\n" },
  },
}

local function probe(kind, port)
  for _, p in ipairs(PROBES[kind]) do
    local log = LOGS .. "/probe.log"
    if not sh(fmt("%s/probe %s %d %s %s >%s 2>&1", BIN, p[1], port, q(p[2]), q(p[3]), q(log))) then
      return false, trim(readfile(log))
    end
  end
  return true
end

-- ---------------------------------------------------------------------------
-- Bug reports for sockrun misbehaving (one file per distinct problem)

local bug_seen, bug_n = {}, 0
local function bug_report(title, body)
  if bug_seen[title] then return end
  bug_seen[title] = true
  sh("mkdir -p " .. BUGS)
  repeat
    bug_n = bug_n + 1
  until not readfile(fmt("%s/bench-%d.md", BUGS, bug_n))
  local path = fmt("%s/bench-%d.md", BUGS, bug_n)
  writefile(path, fmt("# bench: %s\n\n%s\n", title, body))
  io.stderr:write("bench: sockrun misbehaved, wrote " .. path .. "\n")
end

-- ---------------------------------------------------------------------------
-- Load generators. Each returns a result table: value (the figure),
-- gen_busy, ok, note, detail.

local function run_load(cmd, log)
  local c0, t0 = children_cpu(), now()
  local ok = sh(fmt("%s >%s 2>&1", cmd, q(log)))
  local t1, c1 = now(), children_cpu()
  return ok, t1 - t0, (c1 - c0) / (t1 - t0), readfile(log) or ""
end

local function taskset_load(cmd) return fmt("taskset -c %d %s", LOAD_CPU, cmd) end

local function wrk(port, close, seconds, log)
  local cmd = taskset_load(fmt("timeout -s INT %d wrk -t1 -c64 -d%ds %s http://127.0.0.1:%d/",
    seconds + 30, seconds, close and "-H 'Connection: close'" or "", port))
  local ok, wall, gen, out = run_load(cmd, log)
  local rate = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  local notes = {}
  local se = out:match("Socket errors:([^\n]*)")
  if se then notes[#notes + 1] = "socket errors:" .. se end
  local non2xx = out:match("Non%-2xx or 3xx responses:%s*(%d+)")
  if non2xx then notes[#notes + 1] = non2xx .. " non-2xx" end
  return { value = rate, wall = wall, gen_busy = gen, ok = ok and rate ~= nil and rate > 0,
           note = #notes > 0 and table.concat(notes, "; ") or nil, out = out }
end

local W4_TESTS = { "PING_INLINE", "PING_MBULK", "SET", "GET" }

local function redis_bench(port, pipeline, n, log)
  local cmd = taskset_load(fmt("timeout -s INT 240 redis-benchmark -h 127.0.0.1 -p %d " ..
    "-t ping,set,get -n %d -c 50 %s --csv", port, n, pipeline > 1 and ("-P " .. pipeline) or ""))
  local ok, wall, gen, out = run_load(cmd, log)
  local per, total_time = {}, 0
  for test, rps in out:gmatch('"([%w_]+)","([%d%.]+)"') do per[test] = tonumber(rps) end
  local complete = true
  for _, t in ipairs(W4_TESTS) do
    if not per[t] or per[t] <= 0 then complete = false else total_time = total_time + n / per[t] end
  end
  local rate = complete and (#W4_TESTS * n / total_time) or nil
  return { value = rate, wall = wall, gen_busy = gen, ok = ok and complete,
           per = per, note = (not ok or not complete) and "redis-benchmark failed or timed out" or nil,
           out = out }
end

-- ---------------------------------------------------------------------------
-- Workloads

local function base_measure(kind, load)
  return function(server, run, row)
    local port = free_port()
    local tag = fmt("%s-%s-run%d", row.id, server.id, run)
    local slog = fmt("%s/%s.server.log", LOGS, tag)
    local pid = start(server.cmd(kind, port), slog, server.cpu or SERVER_CPU)
    local res
    if not wait_listening(pid, port, 10) then
      res = { ok = false, note = "server did not start: " .. firstline(readfile(slog)) }
    else
      local pok, perr = probe(kind, port)
      if not pok then
        res = { ok = false, note = "wrong answer: " .. firstline(perr), probe = perr }
      else
        res = load(server, port, tag, pid)
      end
    end
    res.server_log = slog
    res.alive = alive(pid)
    if not res.alive then
      res.ok = false
      res.note = (res.note and res.note .. "; " or "") .. "server died"
    end
    stop(pid)
    return res
  end
end

-- Run fn() (a load that returns a result with its wall time) and add the
-- server's CPU over it: the busy fraction of its (pinned) core.
local function busy_over(pid, fn, cores)
  local c0 = cpu_seconds(pid)
  local res = fn()
  local c1 = cpu_seconds(pid)
  if c0 and c1 and res.wall and res.wall > 0 then
    res.busy = math.min(cores or 1, (c1 - c0) / res.wall)
  end
  return res
end

local function http_load(close)
  return function(server, port, tag, pid)
    if WARMUP > 0 then wrk(port, close, WARMUP, fmt("%s/%s.warmup.log", LOGS, tag)) end
    return busy_over(pid, function()
      return wrk(port, close, DURATION, fmt("%s/%s.load.log", LOGS, tag))
    end, server and server.cores)
  end
end

-- echoload warms up, then counts for DURATION and exits. The driver sleeps
-- alongside and samples the server's and echoload's CPU at the edges of
-- the counted window (to within process start-up, a few ms).
local function echo_load(conns, bytes, window)
  return function(_, port, tag, pid)
    local log = fmt("%s/%s.load.log", LOGS, tag)
    local lpid = start(fmt("%s/echoload -p %d -c %d -s %d -W %d -d %d -w %d",
      BIN, port, conns, bytes, window, DURATION, WARMUP), log, LOAD_CPU)
    if WARMUP > 0 then sleep(WARMUP) end
    local c0, g0, t0 = cpu_seconds(pid), cpu_seconds(lpid), now()
    sleep(DURATION)
    local c1, g1, t1 = cpu_seconds(pid), cpu_seconds(lpid), now()
    local deadline = now() + 30
    while alive(lpid) and now() < deadline do sleep(0.1) end
    stop(lpid)
    local out = readfile(log) or ""
    local rate = tonumber(out:match("rate=([%d%.]+)"))
    local mib = tonumber(out:match("mib_s=([%d%.]+)"))
    local errors = tonumber(out:match("errors=(%d+)"))
    local res = { value = bytes >= 1024 and mib or rate, out = out,
                  ok = rate ~= nil and rate > 0 and errors == 0 }
    if errors == nil or errors > 0 then
      res.note = "echoload: " .. (trim(out):gsub("\n", " / "))
    end
    if c0 and c1 then res.busy = math.min(1, (c1 - c0) / (t1 - t0)) end
    if g0 and g1 then res.gen_busy = math.min(1, (g1 - g0) / (t1 - t0)) end
    return res
  end
end

local function resp_load(pipeline)
  return function(_, port, tag, pid)
    if WARMUP > 0 then
      redis_bench(port, pipeline, math.min(REQUESTS, 20000), fmt("%s/%s.warmup.log", LOGS, tag))
    end
    return busy_over(pid, function()
      return redis_bench(port, pipeline, REQUESTS, fmt("%s/%s.load.log", LOGS, tag))
    end)
  end
end

local function idle_load(_, port, tag, pid)
  local warm = fmt("%s/%s.warmup.log", LOGS, tag)
  sh(taskset_load(fmt("timeout -s KILL 60 %s/idleconn -p %d -n 200 -x >%s 2>&1", BIN, port, q(warm))))
  sleep(0.3)
  local rss0 = rss_kib(pid)
  local log = fmt("%s/%s.load.log", LOGS, tag)
  local lpid = start(fmt("%s/idleconn -p %d -n %d -t 120", BIN, port, CONNS), log, LOAD_CPU)
  local deadline = now() + 90
  local out = ""
  while now() < deadline do
    out = readfile(log) or ""
    if out:find("ready") or not alive(lpid) then break end
    sleep(0.1)
  end
  local opened = tonumber(out:match("opened=(%d+)"))
  local res = { out = out }
  if opened and opened > 0 then
    sleep(0.5)
    local rss1 = rss_kib(pid)
    res.rss0, res.rss1, res.opened = rss0, rss1, opened
    if rss0 and rss1 then res.value = (rss1 - rss0) / opened end
    res.ok = res.value ~= nil and opened == CONNS
    if opened < CONNS then res.note = fmt("only %d of %d connections opened", opened, CONNS) end
  else
    res.ok = false
    res.note = "idleconn: " .. firstline(out ~= "" and out or "no output")
  end
  stop(lpid)
  return res
end

local ROWS = {
  { id = "W1", group = "W1", label = "W1 HTTP keep-alive", unit = "req/s", kind = "http",
    load = http_load(false), higher = true },
  { id = "W2", group = "W2", label = "W2 HTTP Connection: close", unit = "req/s", kind = "http",
    load = http_load(true), higher = true },
  { id = "W3a", group = "W3", label = "W3 echo 64 conns x 64 B, lock-step", unit = "round trips/s", kind = "echo",
    load = echo_load(64, 64, 1), higher = true },
  { id = "W3b", group = "W3", label = "W3 echo 1 conn x 64 KiB, 4 in flight", unit = "MiB/s",
    kind = "echo", load = echo_load(1, 65536, 4), higher = true },
  { id = "W4", group = "W4", label = "W4 RESP -c 50", unit = "req/s", kind = "resp",
    load = resp_load(1), higher = true },
  { id = "W4P", group = "W4", label = "W4 RESP -c 50 -P 16", unit = "req/s", kind = "resp",
    load = resp_load(16), higher = true },
  { id = "W5", group = "W5", label = fmt("W5 idle conns (%d)", CONNS), unit = "KiB/conn", kind = "echo",
    load = idle_load, higher = false, no_busy = true },
}

-- ---------------------------------------------------------------------------
-- Statistics and formatting

local function median(xs)
  local t = {}
  for _, x in ipairs(xs) do t[#t + 1] = x end
  if #t == 0 then return nil end
  table.sort(t)
  local m = (#t + 1) // 2
  if #t % 2 == 1 then return t[m] end
  return (t[m] + t[m + 1]) / 2
end

local function spread(xs)
  if #xs < 2 then return nil end
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(xs) do lo, hi = math.min(lo, x), math.max(hi, x) end
  local m = median(xs)
  return m ~= 0 and (hi - lo) / m or nil
end

local function num(x, unit)
  if x == nil then return "—" end
  if unit == "KiB/conn" then return fmt("%.3f", x) end -- (the W5 target: 1.5)
  if unit == "MiB/s" then return fmt("%.0f", x) end
  if x >= 1e6 then return fmt("%.2fM", x / 1e6) end
  if x >= 1e4 then return fmt("%.1fk", x / 1e3) end
  return fmt("%.0f", x)
end

local function pct(x) return x and fmt("%.0f%%", x * 100) or "—" end
local function ratio(x) return x and fmt("%.2fx", x) or "—" end

-- ---------------------------------------------------------------------------
-- Main

local results = {} -- results[row.id][server.id] = { run results }

local function measure_all()
  for run = 1, RUNS do
    for _, row in ipairs(ROWS) do
      if not ONLY or ONLY[row.group] or ONLY[row.id:upper()] then
        results[row.id] = results[row.id] or {}
        -- rotate the order from run to run, so that no server always goes first
        for k = 0, #SERVERS - 1 do
          local server = SERVERS[(k + run - 1) % #SERVERS + 1]
          if server.available and server.kinds[row.kind] then
            io.stderr:write(fmt("bench: run %d/%d %-28s %-13s ", run, RUNS, row.label, server.name))
            io.stderr:flush()
            local measure = base_measure(row.kind, row.load)
            local ok, res = pcall(measure, server, run, row)
            if not ok then res = { ok = false, note = "driver error: " .. tostring(res) } end
            results[row.id][server.id] = results[row.id][server.id] or {}
            results[row.id][server.id][run] = res
            io.stderr:write(fmt("%s %s%s%s\n", num(res.value, row.unit), row.unit,
              res.busy and fmt(" (server busy %s)", pct(res.busy)) or "",
              res.note and (" [" .. res.note .. "]") or ""))
            if server.id == "sockrun" and not res.ok then
              bug_report(fmt("%s: %s", row.label, firstline(res.note or "failed")), fmt(
                "The benchmark server `bench/sockrun/%s.lua` misbehaved under %s (run %d).\n\n" ..
                "Reproduce: `%s bench/sockrun/%s.lua PORT`, then the load of that row\n" ..
                "(see bench/README.md; `BENCH_ONLY=%s BENCH_SERVERS=c,sockrun make bench`).\n\n" ..
                "Note: %s\n\nProbe output:\n```\n%s\n```\nLoad output (tail):\n```\n%s\n```\n" ..
                "Server log (tail):\n```\n%s\n```\n",
                row.kind, row.label, run, SOCKRUN, row.kind, row.group, res.note or "",
                res.probe or "", (res.out or ""):sub(-1500),
                (readfile(res.server_log or "") or ""):sub(-1500)))
            end
          end
        end
      end
    end
  end
end

-- One run's figure: "value", "busy", "gen" (load generator busy) or "per"
-- (value per busy server core); nil when the run failed.
local function figure(r, field)
  if not r or not r.ok then return nil end
  if field == "value" then return r.value end
  if field == "busy" then return r.busy end
  if field == "gen" then return r.gen_busy end
  if field == "per" and r.value and r.busy and r.busy > 0 then return r.value / r.busy end
  return nil
end

-- Median and spread over runs of a figure, or of its ratio to the same
-- figure of a reference server in the same run; and how many runs counted.
local function summarize(row_id, server_id, ref_id, field)
  local runs = results[row_id] and results[row_id][server_id]
  local refs = ref_id and results[row_id] and results[row_id][ref_id]
  if ref_id and not refs then return nil, nil, 0 end
  local xs = {}
  for run, r in pairs(runs or {}) do
    local v = figure(r, field)
    if v and refs then
      local rv = figure(refs[run], field)
      v = rv and rv > 0 and v / rv or nil
    end
    if v then xs[#xs + 1] = v end
  end
  return median(xs), spread(xs), #xs
end

local function versions()
  local v = {}
  local function add(name, cmd)
    v[#v + 1] = fmt("%s: %s", name, firstline(capture(cmd .. " 2>&1")))
  end
  add("sockrun -v", SOCKRUN .. " -v")
  add("sockrun commit", "git rev-parse --short HEAD 2>/dev/null || echo unknown")
  add("lua5.4 -v", "lua5.4 -v")
  add("libuv", "pkg-config --modversion libuv")
  add("lua-luv", "dpkg-query -W -f='${Version}' lua-luv")
  add("node", "node --version")
  add("redis-server", "redis-server --version")
  add("redis-benchmark", "redis-benchmark --version")
  add("wrk", "wrk --version | head -1")
  add("kernel", "uname -sr")
  return v
end

local function report(elapsed)
  local L = {}
  local function w(s) L[#L + 1] = s or "" end
  local cpu = firstline(capture("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"))
  w("# sockrun benchmark results")
  w()
  w(fmt("- date: %s", firstline(capture("date -u '+%Y-%m-%d %H:%M UTC'"))))
  w(fmt("- machine: nproc %d, CPU %s, %s", NPROC, cpu,
        firstline(capture("free -h | awk '/^Mem:/{print $2 \" RAM\"}'"))))
  for _, s in ipairs(versions()) do w("- " .. s) end
  w(fmt("- settings: %d run(s), %d s load (+%d s warm-up) for W1-W3, redis-benchmark -n %d, " ..
         "%d idle connections; total %.0f s%s", RUNS, DURATION, WARMUP, REQUESTS, CONNS, elapsed,
         (RUNS < 3 or DURATION < 5) and " (a SMOKE run: too short to quote)" or ""))
  w(fmt("- server pinned to CPU %d, load generator to CPU %d (taskset)", SERVER_CPU, LOAD_CPU))
  w()
  w("Figures are medians over the runs; *spread* is (max - min) / median. *server busy* is the")
  w("server's CPU time (utime + stime from /proc/PID/stat, all its threads) over the wall time of")
  w("the load: the busy fraction of its core. *per busy core* is rate / busy. *x C* columns are the")
  w("median over runs of the ratio to the C baseline measured in the same run (raw, and per busy")
  w("core). *load busy* is the load generator's CPU fraction: near 100% means the load generator,")
  w("not the server, set the rate. W5 is VmRSS growth per idle connection (lower is better).")
  w()
  w("| workload | server | rate | spread | server busy | per busy core | x C | x C per busy core | load busy | notes |")
  w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
  for _, row in ipairs(ROWS) do
    if results[row.id] then
      for _, server in ipairs(SERVERS) do
        local runs = results[row.id][server.id]
        if runs then
          local v, sp, n = summarize(row.id, server.id, nil, "value")
          local busy = summarize(row.id, server.id, nil, "busy")
          local per = summarize(row.id, server.id, nil, "per")
          local gen = summarize(row.id, server.id, nil, "gen")
          local xc = server.id ~= "c" and summarize(row.id, server.id, "c", "value") or nil
          local xcp = server.id ~= "c" and summarize(row.id, server.id, "c", "per") or nil
          local notes = {}
          for run, r in pairs(runs) do
            if r.note then notes[#notes + 1] = fmt("run %d: %s", run, r.note) end
          end
          if n < #runs then table.insert(notes, 1, fmt("%d of %d runs failed", #runs - n, #runs)) end
          local unit = row.unit
          w(fmt("| %s | %s | %s %s | %s | %s | %s | %s | %s | %s | %s |", row.label, server.name,
            num(v, unit), unit, sp and pct(sp) or "—",
            row.no_busy and "—" or pct(busy),
            row.no_busy and "—" or num(per, unit),
            server.id == "c" and "1.00x" or ratio(xc),
            row.no_busy and "—" or (server.id == "c" and "1.00x" or ratio(xcp)),
            row.no_busy and "—" or pct(gen),
            (table.concat(notes, "; "):gsub("|", "/"):gsub("\n", " "))))
        end
      end
    end
  end
  w()

  -- Targets of the issue, judged on both raw and per-busy-core ratios.
  local function target(label, row_id, ref_id, min)
    if not results[row_id] or not results[row_id].sockrun or not results[row_id][ref_id] then return end
    local raw = summarize(row_id, "sockrun", ref_id, "value")
    local per = summarize(row_id, "sockrun", ref_id, "per")
    local function mark(x) return x and (x >= min and "met" or "missed") or "—" end
    w(fmt("| %s | >= %.2fx | %s (%s) | %s (%s) |", label, min, ratio(raw), mark(raw), ratio(per), mark(per)))
  end
  w("## Targets (sockrun)")
  w()
  w("| target | wanted | raw ratio | per busy core ratio |")
  w("|---|---:|---:|---:|")
  target("W1 vs C", "W1", "c", 0.9)
  target("W1 vs luv", "W1", "luv", 1.15)
  target("W2 vs C", "W2", "c", 0.8)
  target("W3 64 B vs C", "W3a", "c", 0.85)
  target("W3 64 KiB vs C", "W3b", "c", 0.9)
  target("W4 -P 16 vs luv", "W4P", "luv", 1.5)
  target("W4 -P 16 vs redis-server", "W4P", "redis", 0.5)
  if results.W5 and results.W5.sockrun then
    local v = summarize("W5", "sockrun", nil, "value")
    w(fmt("| W5 memory per idle connection | <= 1.50 KiB | %s KiB (%s) | — |", num(v, "KiB/conn"),
      v and (v <= 1.5 and "met" or "missed") or "—"))
  end
  w()

  -- W4 per test, and every run's raw figure.
  if results.W4 or results.W4P then
    w("## W4 per redis-benchmark test (median req/s)")
    w()
    w("| server | pipeline | PING_INLINE | PING_MBULK | SET | GET |")
    w("|---|---|---:|---:|---:|---:|")
    for _, rid in ipairs { "W4", "W4P" } do
      for _, server in ipairs(SERVERS) do
        local runs = results[rid] and results[rid][server.id]
        if runs then
          local cells = {}
          for _, t in ipairs(W4_TESTS) do
            local xs = {}
            for _, r in pairs(runs) do if r.per and r.per[t] then xs[#xs + 1] = r.per[t] end end
            cells[#cells + 1] = num(median(xs), "req/s")
          end
          w(fmt("| %s | %s | %s |", server.name, rid == "W4P" and "-P 16" or "none", table.concat(cells, " | ")))
        end
      end
    end
    w()
  end
  w("## Every run")
  w()
  w("| workload | server | value per run | server busy per run |")
  w("|---|---|---|---|")
  for _, row in ipairs(ROWS) do
    for _, server in ipairs(SERVERS) do
      local runs = results[row.id] and results[row.id][server.id]
      if runs then
        local vs, bs = {}, {}
        for run = 1, RUNS do
          local r = runs[run]
          vs[#vs + 1] = r and (r.ok and num(r.value, row.unit) or "failed") or "—"
          bs[#bs + 1] = r and r.busy and pct(r.busy) or "—"
        end
        w(fmt("| %s | %s | %s | %s |", row.label, server.name, table.concat(vs, ", "),
          row.no_busy and "—" or table.concat(bs, ", ")))
      end
    end
  end
  w()
  return table.concat(L, "\n")
end

-- strace -c -f on each W1 server for a short bounded run: syscalls per request.
local function strace_w1()
  if not have("strace") then return nil end
  local L = { "## Syscalls per W1 request (strace -c -f, 2 s of wrk -c 64 under strace)", "",
              "| server | requests | syscalls | per request | top syscalls per request |",
              "|---|---:|---:|---:|---|" }
  for _, server in ipairs(SERVERS) do
    if server.available and server.kinds.http then
      local port = free_port()
      local tag = "strace-" .. server.id
      local out = fmt("%s/%s.strace", LOGS, tag)
      local spid = start(fmt("strace -c -f -o %s %s", q(out), server.cmd("http", port)),
                         fmt("%s/%s.server.log", LOGS, tag), SERVER_CPU)
      if wait_listening(spid, port, 15) then
        local r = wrk(port, false, 2, fmt("%s/%s.load.log", LOGS, tag))
        local reqs = tonumber((r.out or ""):match("(%d+) requests in"))
        -- stop the traced server (strace's child) by its PID; strace then
        -- writes the summary and exits
        local child = tonumber((readfile(fmt("/proc/%d/task/%d/children", spid, spid)) or ""):match("%d+"))
        if child then
          sh(fmt("kill -TERM %d 2>/dev/null", child))
          for _ = 1, 50 do if not alive(spid) then break end sleep(0.1) end
        end
        stop(spid)
        local s = readfile(out) or ""
        -- rows: % time, seconds, usecs/call, calls, [errors,] syscall
        local rows, total = {}, 0
        for line in s:gmatch("[^\n]+") do
          local f = {}
          for x in line:gmatch("%S+") do f[#f + 1] = x end
          if #f >= 5 and tonumber(f[1]) and tonumber(f[4]) and f[#f] ~= "total" then
            rows[#rows + 1] = { name = f[#f], calls = tonumber(f[4]) }
            total = total + tonumber(f[4])
          end
        end
        table.sort(rows, function(a, b) return a.calls > b.calls end)
        local top = {}
        for i = 1, math.min(5, #rows) do
          top[#top + 1] = fmt("%s %.2f", rows[i].name, reqs and reqs > 0 and rows[i].calls / reqs or 0)
        end
        L[#L + 1] = fmt("| %s | %s | %s | %s | %s |", server.name, reqs or "—", total,
          reqs and reqs > 0 and fmt("%.2f", total / reqs) or "—", table.concat(top, ", "))
      else
        stop(spid)
        L[#L + 1] = fmt("| %s | — | — | — | did not start under strace |", server.name)
      end
    end
  end
  L[#L + 1] = ""
  return table.concat(L, "\n")
end

local function main()
  sh("mkdir -p " .. q(LOGS))
  for _, tool in ipairs { "wrk", "redis-benchmark", "taskset" } do
    if not have(tool) then io.stderr:write("bench: missing " .. tool .. " (run bench/deps.sh)\n") end
  end
  for _, s in ipairs(SERVERS) do
    if not s.available and not (SERVERS_ONLY and not SERVERS_ONLY[s.id:upper()]) then
      io.stderr:write("bench: " .. s.name .. " not available, skipped\n")
    end
  end
  local foreign = trim(capture("pgrep -x redis-server 2>/dev/null"))
  if foreign ~= "" then
    io.stderr:write("bench: warning: redis-server already running (PID " .. foreign:gsub("\n", ",") ..
                    "), not ours: it may compete for the CPUs\n")
  end
  local t0 = now()
  measure_all()
  local strace = STRACE and (not ONLY or ONLY.W1) and strace_w1() or nil
  local text = report(now() - t0)
  if strace then text = text .. "\n" .. strace end
  if foreign ~= "" then
    text = text .. "\nWarning: a redis-server not started by the bench was running during the run.\n"
  end
  io.stdout:write(text)
  writefile(OUT, text)
  io.stderr:write(fmt("bench: wrote %s (%.0f s)\n", OUT, now() - t0))
end

local ok, err = xpcall(main, debug.traceback)
stop_all()
if not ok then
  io.stderr:write("bench: " .. tostring(err) .. "\n")
  os.exit(1)
end
