-- chaos.lua SEED ROUNDS: random clients against a server of random habits,
-- with a monkey that cancels client tasks, closes their sockets under them
-- and shortens their timeouts. Run by reliability_spec.lua in the binary
-- and in a plain interpreter. What it checks:
--   - data that arrives is the data sent, unless the monkey interfered
--     (a timeout is not interference: it leaves the socket usable and a
--     write that timed out has queued its data);
--   - every failure is `nil, message, code` (strings);
--   - no task fails, except those that raise on purpose;
--   - once every client is done and the servers are closed, no socket, no
--     task and no socket descriptor is left over.
-- It prints one line of counts ("name=n ...", sorted) and then, for each
-- problem, a line starting "FAILURE:". Everything goes to 127.0.0.1 or a
-- unix path; every wait is bounded.
local sr = require "sockrun"
local seed = assert(tonumber(arg[1]), "usage: chaos.lua SEED ROUNDS")
local ROUNDS = assert(tonumber(arg[2]), "usage: chaos.lua SEED ROUNDS")
local CONCURRENT = 12
math.randomseed(seed)
local R = math.random

local failures = {}
local counts = setmetatable({}, { __index = function() return 0 end })
local function count(k) counts[k] = counts[k] + 1 end
local function fail(msg) failures[#failures + 1] = msg end

local stat = assert(io.open("/proc/self/stat"))
local pid = stat:read("n")
stat:close()

--- This process's socket descriptors, as a set of "fd -> socket:[inode]",
-- and how many. (Only sockets: what else the process has open, files and
-- pipes of glibc's name lookups say, is not sockrun's.)
local function descriptors()
  local p = io.popen("ls -l /proc/" .. pid .. "/fd")
  local set, n = {}, 0
  for fd, what in p:read("a"):gmatch("(%d+) %-> (socket:[^\n]*)") do
    set[fd .. " -> " .. what], n = true, n + 1
  end
  p:close()
  return set, n
end

local function extra(after, before)
  local t = {}
  for k in pairs(after) do
    if not before[k] then t[#t + 1] = k end
  end
  table.sort(t)
  return table.concat(t, ", ")
end
local sockets_before, tasks_before = sr._core.counts()
local fds_before, nfds_before = descriptors()

sr.onerror(function(err)
  if tostring(err):find("on purpose", 1, true) then
    count("raised")
  else
    fail(tostring(err))
  end
end)

--- Check the shape of a failure (ok == nil), count its code; pass all on.
local function checked(ok, msg, code)
  if ok == nil then
    if type(msg) ~= "string" or type(code) ~= "string" then
      fail("error shape: " .. tostring(msg) .. ", " .. tostring(code))
    end
    count("err." .. tostring(code))
  end
  return ok, msg, code
end

local function random_bytes(n)
  local t = {}
  for i = 1, n // 4 + 1 do t[i] = string.pack("<I4", R(0, 0xffffffff)) end
  return table.concat(t):sub(1, n)
end

--- s:read, on again after each timeout (the monkey's, say): a timeout
-- leaves the socket usable, with what was read so far still buffered.
local function read(s, ...)
  for _ = 1, 5000 do
    local v, msg, code = s:read(...)
    if v or code ~= "ETIMEDOUT" then return v, msg, code end
    count("read_timeout")
  end
  return nil, "timeout", "ETIMEDOUT"
end

-- Counts to read; index 0 is nil, whatever has come.
local FORMATS = { 1, 7, 100, 4096, 70000 }
local function random_count_or_any()
  local i = R(0, #FORMATS)
  return FORMATS[i]
end

-- The server: the first line a client sends picks what it does.
local habits = {}

function habits.echo(conn)
  while true do
    local d = conn:read(random_count_or_any())
    if not d or not conn:write(d) then return end
    if R(50) == 1 then coroutine.yield() end
  end
end

function habits.lines(conn)
  for line in conn:lines("L") do
    if not conn:write(line) then return end
  end
end

function habits.sum(conn) -- a running sum of the numbers sent, a line each
  local sum = 0
  while true do
    local n = conn:read("n")
    if not n then return end
    sum = sum + n
    conn:write(sum, "\n")
  end
end

function habits.drop(conn) -- goes away with unread data, maybe with a RST
  conn:read(R(100))
  if R(2) == 1 then conn:setsockopt("linger", 0) end
end

function habits.big(conn) -- a length line, then that many "z" in pieces
  local n = R(1, 3000000)
  conn:write(n, "\n")
  local piece = ("z"):rep(200000)
  while n > 0 do
    local k = math.min(n, R(1, #piece))
    if not conn:write(piece:sub(1, k)) then return end
    n = n - k
  end
end

function habits.impatient(conn) -- echoes, with reads that time out
  conn:settimeout(R() * 0.02)
  while true do
    local d, _, code = conn:read(R(1, 10))
    if not d and code ~= "ETIMEDOUT" then return end
    if d then conn:write(d) end
  end
end

local function serve(conn)
  local habit = habits[conn:read("l") or ""]
  if habit then habit(conn) end
end

local tcp = assert(sr.listen("127.0.0.1", 0, serve))
local port = select(2, tcp:getsockname())
local path = os.tmpname()
os.remove(path)
local unix = assert(sr.listen(path, serve))

-- Clients. Each gets `me`: me.socket is what the monkey may close,
-- me.task what it may cancel, me.meddled whether it did.
local live = {}

local function connect(me)
  local s
  if R(3) == 1 then
    s = checked(sr.connect(path))
  else
    s = checked(sr.connect("127.0.0.1", port))
  end
  me.socket = s
  return s
end

--- What must succeed unless the monkey meddled: v, or nil once the
-- failure is checked (and reported, without meddling).
local function must(me, what, v, msg, code)
  if v == nil then
    checked(v, msg, code)
    if not me.meddled then fail(what .. ": " .. tostring(code)) end
  end
  return v
end

--- Connect, and tell the server which habit to show.
local function open(me, habit)
  local s = connect(me)
  if s and checked(s:write(habit, "\n")) then return s end
end

local clients = {}

function clients.echo(me)
  local s = connect(me)
  if not s then return end
  local data = random_bytes(R(0, R(2) == 1 and 300 or 2500000))
  checked(s:write("echo\n"))
  local reader = sr.spawn(function()
    local got, n = {}, 0
    while n < #data do
      local f = random_count_or_any()
      if f and f > #data - n then f = #data - n end
      local d, msg, code = read(s, f)
      if d then
        got[#got + 1] = d
        n = n + #d
      else
        checked(d, msg, code)
        return "failed"
      end
    end
    return table.concat(got) == data and "same" or "different"
  end)
  local off = 1
  while off <= #data do
    local k = R(1, R(2) == 1 and 10 or 300000)
    local ok, msg, code = s:write(data:sub(off, off + k - 1))
    if ok or code == "ETIMEDOUT" then -- queued even so
      off = off + k
    else
      checked(ok, msg, code)
      break
    end
  end
  -- The server may wait for more than is left (read(4096)): at EOF it
  -- gets what there is.
  checked(s:shutdown())
  local r, _, code = reader:join(10)
  if not r then
    reader:cancel()
    r = code
  end
  count("echo." .. r)
  if r ~= "same" and not me.meddled then
    fail(("echo of %d bytes: %s, no meddling"):format(#data, r))
  end
end

function clients.lines(me)
  local s = open(me, "lines")
  if not s then return end
  local sent = {}
  for i = 1, R(1, 200) do
    sent[i] = random_bytes(R(0, 50)):gsub("[\r\n]", "x") ..
              (R(2) == 1 and "\r\n" or "\n")
  end
  sr.spawn(function()
    s:write(table.concat(sent))
    if R(2) == 1 then s:shutdown() end
  end)
  for i = 1, #sent do
    local line = must(me, "lines", read(s, "L"))
    if not line then return end
    if line ~= sent[i] and not me.meddled then fail("lines: a different line") end
  end
  count("lines.same")
end

function clients.sum(me)
  local s = open(me, "sum")
  if not s then return end
  local sum = 0
  for _ = 1, R(1, 50) do
    local v = R(-1000, 1000)
    if R(20) == 1 then
      s:write(" 0x1F ")
      v = 31
    else
      s:write(" ", v, "\t")
    end
    sum = sum + v
    local got = must(me, "sum", read(s, "n"))
    if not got then return end
    if got ~= sum and not me.meddled then
      fail(("sum: %s, not %d"):format(got, sum))
    end
  end
  count("sum.same")
  if R(3) == 1 then -- not a number: the server ends the connection
    s:write(" garbage ")
    local rest = read(s, "a") -- the end of the last sum's line, then EOF
    if not (rest and rest:find("^%s*$")) and not me.meddled then
      fail("sum: after garbage, " .. tostring(rest))
    end
  end
end

function clients.drop(me)
  local s = open(me, "drop")
  if not s then return end
  for _ = 1, R(1, 40) do
    if not checked(s:write(random_bytes(R(1, 100000)))) then break end
  end
  checked(s:read("a"))
  count("drop.done")
end

function clients.big(me)
  local s = open(me, "big")
  if not s then return end
  local n = read(s, "n") -- one format a call: read() goes on after a timeout
  if not (n and read(s, "l")) then return end
  local total = 0
  while total < n do
    local d, msg, code = read(s, random_count_or_any())
    if not d then
      checked(d, msg, code)
      break
    end
    if d:find("[^z]") then fail("big: a byte that is not z") end
    total = total + #d
    if R(10) == 1 then sr.sleep(0.001) end
    if R(500) == 1 then count("big.left") return end -- close with data unread
  end
  count(total == n and "big.all" or "big.short")
  if total ~= n and not me.meddled then fail("big: " .. total .. " of " .. n) end
end

function clients.impatient(me)
  local s = open(me, "impatient")
  if not s then return end
  s:settimeout(R() * 0.05)
  for _ = 1, R(1, 10) do
    if R(2) == 1 then sr.sleep(R() * 0.03) end
    s:write(random_bytes(R(1, 10)))
    local d, msg, code = s:read(R(1, 20))
    if not d then
      checked(d, msg, code)
      if code ~= "ETIMEDOUT" then break end
    end
  end
  count("impatient.done")
end

function clients.udp(me)
  local a = assert(sr.udp("127.0.0.1", 0))
  local b <close> = assert(sr.udp("127.0.0.1", 0))
  me.socket = a
  local _, bport = b:getsockname()
  b:settimeout(0.2)
  for _ = 1, R(1, 20) do
    local msg = random_bytes(R(0, 9000))
    if not checked(a:sendto(msg, "127.0.0.1", bport)) then break end
    local got, emsg, code = b:recvfrom()
    if not got then
      checked(got, emsg, code)
      break
    end
    if got ~= msg then fail("udp: a different datagram") end
  end
  count("udp.done")
end

function clients.abort(me)
  local s = connect(me)
  if not s then return end
  if R(2) == 1 then s:write("echo\n", random_bytes(R(0, 1000000))) end
  s:close()
  local ok, _, code = s:read()
  if ok ~= nil or code ~= "EBADF" then fail("read after close: " .. tostring(code)) end
  count("abort.done")
end

function clients.resolve()
  local t = sr.spawn(function()
    checked(sr.resolve("localhost", R(2) == 1 and "inet" or "any",
                       R(3) == 1 and 0.0001 or nil))
    local s <close> = checked(sr.connect("localhost", port, { timeout = R() * 0.05 }))
    if s then
      s:write("echo\nhi")
      s:shutdown() -- the server may wait for more than "hi"
      checked(read(s, 2))
    end
  end)
  if R(3) == 1 then
    sr.sleep(R() * 0.002)
    t:cancel()
  end
  local _, _, code = t:join(5)
  if code == "ETIMEDOUT" then
    t:cancel()
    fail("resolve: the task is still waiting")
  end
  count("resolve." .. (code or "ok"))
end

function clients.dropped(me) -- sockets left to the collector, some still busy
  for _ = 1, R(1, 5) do
    local s = connect(me)
    me.socket = nil
    if s then
      s:write("echo\n", random_bytes(R(0, 200000)))
      if R(2) == 1 then
        s:settimeout(0.05)
        sr.spawn(function() s:read(10) end)
      end
    end
    s = nil
    if R(2) == 1 then collectgarbage() end
  end
  collectgarbage()
  count("dropped.done")
end

function clients.joins()
  local tasks = {}
  for i = 1, R(1, 6) do
    local prev = tasks[i - 1]
    tasks[i] = sr.spawn(function()
      if prev then
        if R(3) == 1 then prev:cancel() end
        prev:join(R(2) == 1 and 0.01 or nil)
      end
      sr.sleep(R() * 0.01)
      if R(8) == 1 then error("raised on purpose") end
      return i
    end)
  end
  if R(2) == 1 then tasks[R(#tasks)]:cancel() end
  local _, _, code = tasks[#tasks]:join(5)
  count("joins." .. (code or "ok"))
end

function clients.signal()
  local n = 0
  sr.signal("SIGUSR1", function() n = n + 1 end)
  os.execute("kill -USR1 " .. pid)
  sr.sleep(0.02)
  count("signal." .. (n > 0 and "seen" or "missed"))
end

local names = {}
for k in pairs(clients) do names[#names + 1] = k end
table.sort(names)

local running, started = 0, 0

local monkey = sr.spawn(function()
  while started < ROUNDS or running > 0 do
    sr.sleep(R() * 0.01)
    local victims = {}
    for me in pairs(live) do victims[#victims + 1] = me end
    table.sort(victims, function(a, b) return a.n < b.n end)
    local me = victims[R(math.max(1, #victims))]
    local r = R(10)
    if me and r == 1 then
      me.meddled = true
      if me.task:cancel() then count("monkey.cancel") end
    elseif me and r == 2 and me.socket then
      me.meddled = true
      me.socket:close()
      count("monkey.close")
    elseif me and r == 3 and me.socket then
      me.socket:settimeout(0.001)
      count("monkey.timeout")
    end
  end
end)

local t0 = sr.now()
while started < ROUNDS do
  while running >= CONCURRENT do sr.sleep(0.002) end
  started = started + 1
  running = running + 1
  local me = { n = started }
  local client = clients[names[R(#names)]]
  live[me] = true
  me.task = sr.spawn(function()
    local _ <close> = setmetatable({}, { __close = function()
      running = running - 1
      live[me] = nil
      if me.socket then me.socket:close() end
    end })
    client(me)
  end)
end
while running > 0 do sr.sleep(0.01) end
monkey:join()
tcp:close()
unix:close()
sr.signal("SIGUSR1", nil)

-- What is left: the servers' tasks for connections the clients closed
-- are ending; a dropped socket closes when collected, a lingering one
-- when its peer is done; a name lookup that timed out or was cancelled
-- goes on in libuv's thread pool, with what getaddrinfo opens, until it
-- ends.
local deadline = sr.now() + 5
local nsock, ntask, fds, nfds
repeat
  sr.sleep(0.05)
  collectgarbage()
  nsock, ntask = sr._core.counts()
  fds, nfds = descriptors()
until (nsock == sockets_before and ntask == tasks_before and
       nfds == nfds_before) or sr.now() > deadline
if nsock ~= sockets_before or ntask ~= tasks_before then
  fail(("left over: %d socket(s), %d task(s)"):format(nsock, ntask))
end
if nfds ~= nfds_before then
  fail(("socket descriptors: %d before, %d after (new: %s)"):format(
    nfds_before, nfds, extra(fds, fds_before)))
end

local keys = {}
for k in pairs(counts) do keys[#keys + 1] = k .. "=" .. counts[k] end
table.sort(keys)
print(("seed %d, %d rounds in %.1f s: %s"):format(seed, ROUNDS, sr.now() - t0,
                                               table.concat(keys, " ")))
for _, f in ipairs(failures) do print("FAILURE: " .. f) end
