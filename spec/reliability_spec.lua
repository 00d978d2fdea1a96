-- Reliability (issue 5): peers that misbehave, slow readers, timeouts under
-- load, connection churn and many connections at once, EMFILE, the clean
-- shutdown of the binary, mistakes in scripts, the lifetime of sockets and
-- of the loop, signal dispositions, and random interleavings of all kinds
-- of clients (chaos.lua). Peers are real, on loopback:
-- python3 processes, scripts run by the sockrun binary, or sockets in this
-- process. Every loop is bounded in count and in time; processes started
-- here are stopped by their PID (see H.spawn).
local H = require "helper"
local sr = H.sr

after_each(H.run_deferred)
after_each(H.assert_clean)
after_each(H.collect)

local CHUNK = 65536

--- Chunk i of a stream whose every chunk differs: i, as 4 bytes, repeated.
local function block(i)
  return string.pack("<I4", i):rep(CHUNK // 4)
end

local python
--- The python3 interpreter (the real one, not a version manager's shim,
-- which would only slow each start).
local function py()
  if not python then
    python = H.sh("python3 -c 'import sys; print(sys.executable)'")
      :match("[^\n]+") or "python3"
  end
  return python
end

--- A command running python source `src` with `args`.
local function py_cmd(src, args)
  return H.q(py()) .. " " .. H.q(H.tmpfile(src, ".py")) .. " " .. (args or "")
end

local sanitized
--- Prefix for a sockrun process whose memory a test measures: under
-- AddressSanitizer freed memory is kept in a quarantine (256 MiB), which
-- would hide what the runtime itself does with its memory.
local function mem_prefix()
  if sanitized == nil then
    sanitized = H.slurp(H.sockrun):find("__asan_init", 1, true) ~= nil
  end
  if not sanitized then return "" end
  local opts = os.getenv("ASAN_OPTIONS")
  opts = (opts and opts ~= "" and opts .. ":" or "") ..
    "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
  return "ASAN_OPTIONS=" .. H.q(opts)
end

--- A well-behaved client: connects, sends a line and expects it back.
local function served(port, text)
  text = text or "hello"
  local c <close> = assert(sr.connect("127.0.0.1", port, { timeout = 5 }))
  c:settimeout(5)
  assert(c:write(text, "\n"))
  assert.equal(text, (c:read("l")))
end

--- A line server in this process: it sends every line back; "flood" makes
-- it write 64 KiB chunks (64 MiB at most) instead. Each connection's end
-- is recorded: ends[i] the code (EOF, ECONNRESET...), ends.msg[i] the
-- message; ends.lines counts lines received, ends.chunks chunks written.
-- opts: read_timeout, write_timeout (default 10), maxline.
local function line_server(opts)
  opts = opts or {}
  local ends = { msg = {}, lines = 0, chunks = 0 }
  local function finish(msg, code)
    ends[#ends + 1] = code
    ends.msg[#ends] = msg
  end
  local _, port = H.server(function(c)
    c:settimeouts(nil, opts.read_timeout or 10, opts.write_timeout or 10)
    if opts.maxline then c:setmaxline(opts.maxline) end
    while true do
      local line, msg, code = c:read("l")
      if not line then return finish(msg, code) end
      ends.lines = ends.lines + 1
      if line == "flood" then
        local chunk = ("z"):rep(CHUNK)
        for _ = 1, 1024 do
          local ok, wmsg, wcode = c:write(chunk)
          if not ok then return finish(wmsg, wcode) end
          ends.chunks = ends.chunks + 1
        end
      else
        c:write(line, "\n")
      end
    end
  end)
  return ends, port
end

--- How many connections of a line_server ended with `code`.
local function count(ends, code)
  local n = 0
  for _, c in ipairs(ends) do
    if c == code then n = n + 1 end
  end
  return n
end

--- Wait until a counter read by fn() stops growing (the same value, above
-- zero, twice `interval` seconds apart); returns it.
local function stalled(fn, interval)
  local last = -1
  local n = H.wait_for(function()
    local now = fn()
    local same = now > 0 and now == last
    last = now
    return same and now
  end, 20, interval or 0.05)
  return n or last
end

local full_listener = H.full_listener

--- Echo traffic in the background, four clients doing round trips of 4 KiB
-- as fast as they can, until the test ends. Returns its counters: trips,
-- failures.
local function background_load()
  local _, port = H.echo_server()
  local stats = { trips = 0, failures = 0, stop = false }
  local tasks = {}
  for i = 1, 4 do
    tasks[i] = sr.spawn(function()
      local c <close> = assert(sr.connect("127.0.0.1", port))
      c:settimeout(10)
      local msg = ("m"):rep(4096)
      for _ = 1, 1000000 do
        if stats.stop then return end
        c:write(msg)
        if c:read(#msg) ~= msg then
          stats.failures = stats.failures + 1
          return
        end
        stats.trips = stats.trips + 1
      end
    end)
  end
  H.defer(function()
    stats.stop = true
    for _, t in ipairs(tasks) do
      t:join(5)
      if t:status() == "waiting" then t:cancel() end
    end
  end)
  return stats
end

--- H.pair, both closed when the test ends whatever happens.
local function pair()
  local c, a = H.pair()
  H.defer(function()
    c:close()
    a:close()
  end)
  return c, a
end

--- Assert that the load made progress and never failed.
local function assert_load_ok(stats)
  assert.is_true(stats.trips > 0, "the background load made no progress")
  assert.equal(0, stats.failures)
end

-- A line server run by the binary: sends every line back; when a
-- connection ends, prints the code that ended it. Prints its port first.
local LINE_SERVER = [[
local sr = require "sockrun"
io.stdout:setvbuf("line")
local srv = assert(sr.listen("127.0.0.1", 0, function(c)
  c:settimeouts(nil, 60, 10)
  while true do
    local line, _, code = c:read("l")
    if not line then print(code) return end
    c:write(line, "\n")
  end
end))
print((select(2, srv:getsockname())))
]]

describe("a server whose peers misbehave", function()
  it("gives ECONNRESET to a handler whose peer resets mid-read, and serves " ..
     "the others", function()
    local ends, port = line_server()
    local other = H.connect(port)
    other:settimeout(5)
    local c = assert(sr.connect("127.0.0.1", port))
    c:settimeout(5)
    c:write("hello\n")
    assert.equal("hello", c:read("l")) -- the handler now waits for a line
    c:setsockopt("linger", 0)
    c:close() -- RST
    assert(H.wait_for(function() return ends[1] end), "the handler never ended")
    assert.same({ "ECONNRESET" }, { table.unpack(ends) })
    other:write("still here\n")
    assert.equal("still here", other:read("l"))
    served(port)
  end)

  it("gives the partial line, then ECONNRESET, to a handler whose peer " ..
     "sends data then resets", function()
    local ends, port = line_server()
    local c = assert(sr.connect("127.0.0.1", port))
    c:settimeout(5)
    c:write("hello\n")
    assert.equal("hello", c:read("l"))
    c:write("half a li")
    c:setsockopt("linger", 0)
    c:close() -- RST after the data
    assert(H.wait_for(function() return ends[1] end), "the handler never ended")
    assert.equal(2, ends.lines) -- "hello", then the partial "half a li"
    assert.same({ "ECONNRESET" }, { table.unpack(ends) })
    served(port)
  end)

  it("gives a write error to a handler whose peer resets mid-write, and " ..
     "serves the others", function()
    local ends, port = line_server()
    local other = H.connect(port)
    other:settimeout(5)
    local c = assert(sr.connect("127.0.0.1", port))
    c:settimeout(5)
    c:write("flood\n")
    assert.equal(CHUNK, #c:read(CHUNK))
    -- the handler's writes stall: we read no more
    stalled(function() return ends.chunks end)
    assert.is_nil(ends[1])
    c:setsockopt("linger", 0)
    c:close() -- RST
    assert(H.wait_for(function() return ends[1] end), "the handler never ended")
    assert.is_truthy(ends[1] == "ECONNRESET" or ends[1] == "EPIPE", ends[1])
    assert.is_true(ends.chunks < 1024)
    other:write("still here\n")
    assert.equal("still here", other:read("l"))
    served(port)
  end)

  it("times out handlers whose peers vanish without FIN (stopped " ..
     "processes), and serves the others", function()
    local ends, port = line_server({ read_timeout = 0.3, write_timeout = 0.3 })
    local peer = [[
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(sys.argv[2].encode() + b"\n")
time.sleep(60)
]]
    local reader = H.spawn(py_cmd(peer, port .. " hello")) -- handler reads
    local writer = H.spawn(py_cmd(peer, port .. " flood")) -- handler writes
    assert(H.wait_for(function() return ends.lines == 2 end),
      "the peers did not connect; " .. H.slurp(reader.err) ..
      H.slurp(writer.err))
    assert(H.kill(reader, "STOP"))
    assert(H.kill(writer, "STOP"))
    served(port)
    assert(H.wait_for(function() return count(ends, "ETIMEDOUT") == 2 end),
      "the handlers never ended")
    for i, code in ipairs(ends) do
      if code == "ETIMEDOUT" then
        assert.equal("timeout", ends.msg[i])
      else
        assert.equal("EOF", code) -- the clients served meanwhile
      end
    end
    served(port)
    assert(H.kill(reader, "CONT"))
    assert(H.kill(writer, "CONT"))
  end)

  it("frees the handler of a peer that sends half a line and stalls by its " ..
     "read timeout (slowloris)", function()
    local ends, port = line_server({ read_timeout = 1 })
    local slow = {}
    for i = 1, 5 do
      slow[i] = H.connect(port)
      slow[i]:settimeout(5)
      slow[i]:write("GET / HT")
    end
    served(port)
    assert.equal(0, count(ends, "ETIMEDOUT"),
      "a stalled peer held up the others")
    assert(H.wait_for(function() return count(ends, "ETIMEDOUT") == 5 end),
      "the handlers never ended")
    for i = 1, 5 do
      H.assert_eof(slow[i]:read("l")) -- the server closed the connection
    end
    served(port)
  end)

  it("gives nil, \"line too long\", ENOBUFS for a line past the limit, and " ..
     "serves the others", function()
    local ends, port = line_server()
    local c = H.connect(port)
    c:settimeout(5)
    local chunk = ("x"):rep(CHUNK)
    for _ = 1, 64 do -- 4 MiB with no newline: 4 times the default limit
      if not c:write(chunk) then break end
    end
    assert(H.wait_for(function() return ends[1] end), "the handler never ended")
    assert.equal("ENOBUFS", ends[1])
    assert.equal("line too long", ends.msg[1])
    served(port)
  end)

  it("keeps its memory bounded when a line far past the limit comes (64 " ..
     "MiB)", function()
    local p = H.spawn_script(LINE_SERVER, "", { prefix = mem_prefix() })
    local port = H.read_port(p)
    for _ = 1, 3 do served(port) end
    local base = H.proc_stats(p.pid)
    local c = H.connect(port)
    c:settimeout(10)
    local chunk, sent = ("x"):rep(CHUNK), 0
    for _ = 1, 1024 do
      if not c:write(chunk) then break end
      sent = sent + 1
    end
    assert(H.wait_for(function() return H.slurp(p.out):find("ENOBUFS") end),
      "the server did not report ENOBUFS; stderr: " .. H.slurp(p.err))
    assert.is_true(sent < 1024, "the server read the whole line")
    served(port)
    local after = H.proc_stats(p.pid)
    local grew = after.hwm - base.rss
    assert.is_true(grew < 4096, string.format(
      "the server's peak memory grew by %d KiB (resident %d -> peak %d)",
      grew, base.rss, after.hwm))
  end)

  it("ends connections that send random bytes cleanly, and serves the " ..
     "others", function()
    local ends, port = line_server({ maxline = 1024 })
    local failed = {}
    H.quiet_errors(function(err) failed[#failed + 1] = err end)
    local rng = math.random
    for i = 1, 8 do
      local bytes = {}
      for j = 1, 16384 do bytes[j] = string.char(rng(0, 255)) end
      local junk = table.concat(bytes)
      if i % 2 == 0 then junk = junk:gsub("\n", "") end -- a long line too
      local c = H.connect(port)
      c:settimeout(5)
      c:write(junk, junk, junk, junk)
      c:shutdown()
      c:read("a") -- what comes back, until the server ends the connection
      c:close()
    end
    assert(H.wait_for(function() return #ends == 8 end), "handlers did not end")
    for i = 1, 8 do
      local code = ends[i]
      assert.is_truthy(code == "EOF" or code == "ENOBUFS" or
        code == "ECONNRESET", code)
    end
    assert.same({}, failed)
    served(port)
  end)
end)

describe("a slow reader", function()
  -- Writes the number of chunks asked for (block(i) for i = 1..n) to each
  -- connection; prints "sent i" every 16 chunks and "done n" at the end.
  local SLOW_SERVER = [[
local sr = require "sockrun"
io.stdout:setvbuf("line")
local srv = assert(sr.listen("127.0.0.1", 0, function(c)
  c:settimeouts(nil, 10, 60)
  local n = tonumber(c:read("l"))
  for i = 1, n do
    assert(c:write(string.pack("<I4", i):rep(16384)))
    if i % 16 == 0 then print("sent " .. i) end
  end
  print("done " .. n)
end))
print((select(2, srv:getsockname())))
]]

  -- Read n chunks from c; returns the index of the first that is not
  -- block(i), or nil when all are right.
  local function read_blocks(c, n)
    for i = 1, n do
      if c:read(CHUNK) ~= block(i) then return i end
    end
  end

  it("makes the server's writes wait, bounding its memory, and still gets " ..
     "every byte in order", function()
    local mib = tonumber(os.getenv("SOCKRUN_SLOW_MB")) or 256
    local n = mib * 1024 * 1024 // CHUNK
    local p = H.spawn_script(SLOW_SERVER, "", { prefix = mem_prefix() })
    local port = H.read_port(p)
    do -- warm up with a reader that keeps up
      local w <close> = assert(sr.connect("127.0.0.1", port))
      w:settimeout(10)
      w:write("32\n")
      assert.is_nil(read_blocks(w, 32))
      H.assert_eof(w:read(1))
    end
    local base = H.proc_stats(p.pid)
    local c = H.connect(port)
    c:settimeout(30)
    c:write(n, "\n")
    local sent = stalled(function()
      return tonumber(H.slurp(p.out):match(".*sent (%d+)")) or 0
    end, 0.1)
    local mid = H.proc_stats(p.pid)
    assert.is_falsy(H.slurp(p.out):find("done " .. n, 1, true),
      "the server's writes did not wait for the reader")
    assert.is_true(sent < n)
    assert.is_true(mid.rss - base.rss < 4096, string.format(
      "the server's memory grew by %d KiB while its peer read nothing",
      mid.rss - base.rss))
    -- now read: every chunk, in order, then the end
    assert.is_nil(read_blocks(c, n))
    H.assert_eof(c:read(1))
    assert(H.wait_for(function()
      return H.slurp(p.out):find("done " .. n, 1, true)
    end))
    local after = H.proc_stats(p.pid)
    assert.is_true(after.hwm - base.rss < 4096, string.format(
      "the server's peak memory grew by %d KiB sending %d MiB",
      after.hwm - base.rss, mib))
  end)
end)

describe("timeouts under load", function()
  it("time out a read (settimeouts, settimeout), keep what arrived, and " ..
     "read on", function()
    local stats = background_load()
    local c, a = pair()
    c:settimeouts(nil, 0.05, nil)
    H.assert_timeout(c:read("l"))
    a:write("half ")
    H.assert_timeout(c:read("l"))
    a:write("a line\n")
    assert.equal("half a line", c:read("l"))
    c:settimeout(0.05)
    assert.same({ 0.05, 0.05, 0.05 }, { c:gettimeouts() })
    H.assert_timeout(c:read(10))
    a:write("0123456789")
    assert.equal("0123456789", c:read(10))
    assert_load_ok(stats)
    c:close()
    a:close()
  end)

  it("time out a write to a peer that does not read, and every byte still " ..
     "arrives in order", function()
    local stats = background_load()
    local c, a = pair()
    c:settimeouts(nil, nil, 0.05)
    local k, ok, msg, code
    for i = 1, 2048 do -- 128 MiB at most
      ok, msg, code = c:write(block(i))
      if not ok then
        k = i
        break
      end
    end
    assert.is_not_nil(k, "the writes never waited")
    H.assert_timeout(ok, msg, code)
    -- the socket is still usable: the peer reads every chunk in order
    for i = 1, k - 1 do
      if a:read(CHUNK) ~= block(i) then error("chunk " .. i .. " differs") end
    end
    c:settimeouts(nil, nil, 5)
    assert(c:write("end\n"))
    local after = a:read(4)
    if after ~= "end\n" then -- the write that timed out went out whole
      assert.equal(block(k), after .. a:read(CHUNK - 4))
      assert.equal("end\n", a:read(4))
    end
    assert_load_ok(stats)
    c:close()
    a:close()
  end)

  it("time out a connect (opts.timeout, settimeouts) and leave the loop " ..
     "serving", function()
    local stats = background_load()
    local l, port = full_listener()
    if not l then return pending("the system never fills a backlog") end
    H.assert_timeout(sr.connect("127.0.0.1", port, { timeout = 0.1 }))
    local s = assert(sr.socket("inet", "stream"))
    s:settimeouts(0.1, nil, nil)
    H.assert_timeout(s:connect("127.0.0.1", port))
    assert.is_true(s:close())
    local _, port2 = H.echo_server()
    local c = H.connect(port2)
    c:settimeout(5)
    c:write("fine\n")
    assert.equal("fine\n", c:read(5))
    assert_load_ok(stats)
  end)

  it("bound name resolution by the connect timeout", function()
    -- A network namespace of our own whose name server (127.0.0.1:53,
    -- the script's own datagram socket) never answers.
    local _, uns = H.sh("unshare -rnm true 2>/dev/null")
    local _, ip = H.sh("command -v ip >/dev/null")
    if uns ~= 0 or ip ~= 0 then
      return pending("needs unshare -rnm (user namespaces) and ip")
    end
    local resolv = H.tmpfile(
      "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    local script = H.tmpfile([[
local sr = require "sockrun"
local dns = assert(sr.udp("127.0.0.1", 53))
local l = assert(sr.socket("inet", "stream"))
assert(l:bind("127.0.0.1", 0))
assert(l:listen())
local _, port = l:getsockname()
print("sr.connect", sr.connect("sockrun-spec.example", port, { timeout = 0.2 }))
local s = assert(sr.socket("inet", "stream"))
s:settimeouts(0.2, nil, nil)
print("s:connect", s:connect("sockrun-spec.example", port))
print("then", s:connect("127.0.0.1", port))
s:close()
l:close()
dns:close()
]], ".lua")
    local p = H.spawn(string.format(
      "unshare -rnm sh -c %s", H.q(string.format(
        "ip link set lo up && mount --bind %s /etc/resolv.conf && exec %s %s",
        H.q(resolv), H.q(H.sockrun), H.q(script)))))
    assert.equal(0, H.wait_exit(p, 20), H.slurp(p.err))
    assert.equal("sr.connect\tnil\ttimeout\tETIMEDOUT\n" ..
      "s:connect\tnil\ttimeout\tETIMEDOUT\n" ..
      "then\ttrue\n", H.slurp(p.out))
  end)
end)

describe("a server under connection churn", function()
  local CHURN = [[
import socket, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
linger0 = struct.pack("ii", 1, 0)
bad = 0
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if i % 2:
        s.sendall(b"ping\n")
        buf = b""
        while True:  # the reply, then the server's FIN
            d = s.recv(64)
            if not d: break
            buf += d
        if buf != b"ping\n": bad += 1
    else:  # half a line, then RST
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        s.sendall(b"pi")
    s.close()
print("done", n, bad)
]]
  -- One line back, then the server closes.
  local ONE_LINE_SERVER = [[
local sr = require "sockrun"
io.stdout:setvbuf("line")
local srv = assert(sr.listen("127.0.0.1", 0, function(c)
  c:settimeouts(nil, 10, 10)
  local line = c:read("l")
  if line then c:write(line, "\n") end
end))
print((select(2, srv:getsockname())))
]]

  it("keeps its descriptors and memory flat over many short connections, " ..
     "half of them reset", function()
    local n = tonumber(os.getenv("SOCKRUN_CHURN")) or 50000
    local p = H.spawn_script(ONE_LINE_SERVER, "", { prefix = mem_prefix() })
    local port = H.read_port(p)
    local function churn(count)
      local out, code = H.sh("timeout 600 " ..
        py_cmd(CHURN, port .. " " .. count))
      assert.equal(0, code, out)
      assert.equal(string.format("done %d 0\n", count), out)
    end
    churn(2000) -- warm up
    local base = H.proc_stats(p.pid)
    churn(n)
    local after = H.wait_for(function()
      local st = H.proc_stats(p.pid)
      return st.fds <= base.fds and st
    end, 10) or H.proc_stats(p.pid)
    assert.equal(base.fds, after.fds, "descriptors left open")
    assert.is_true(after.rss - base.rss < 2048, string.format(
      "the server's memory grew by %d KiB (%d -> %d) over %d connections",
      after.rss - base.rss, base.rss, after.rss, n))
  end)
end)

describe("a server holding many connections", function()
  local HOLDER = [[
import os, resource, socket, sys, time
port, n, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = [socket.create_connection(("127.0.0.1", port), timeout=30)
         for _ in range(n)]
for s in socks: s.sendall(b"hi\n")
bad = 0
for s in socks:
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(16)
        if not d: break
        buf += d
    if buf != b"hi\n": bad += 1
print("held", n, bad, flush=True)
for _ in range(6000):
    if os.path.exists(go): break
    time.sleep(0.01)
for s in socks: s.close()
print("closed", flush=True)
]]

  it("raises its soft limit on open files and holds as many connections as " ..
     "the hard limit comfortably allows", function()
    local hard = tonumber(H.sh("ulimit -Hn"):match("^%d+"))
    local n = math.min(tonumber(os.getenv("SOCKRUN_HOLD")) or 10000,
      hard and hard - 512 or math.huge)
    if n < 1000 then
      return pending("the hard limit on open files (" .. hard .. ") is too low")
    end
    -- started with the usual soft limit, far below what it will hold
    local p = H.spawn_script(LINE_SERVER, "", {
      prefix = hard and "prlimit --nofile=1024:" .. hard or "" })
    local port = H.read_port(p)
    local base = H.proc_stats(p.pid)
    if hard then
      local soft, max = H.slurp("/proc/" .. p.pid .. "/limits")
        :match("Max open files%s+(%d+)%s+(%d+)")
      assert.equal(hard, tonumber(soft))
      assert.equal(hard, tonumber(max))
    end
    local go = H.tmppath("go")
    local holder = H.spawn(py_cmd(HOLDER,
      string.format("%d %d %s", port, n, H.q(go))))
    assert(H.wait_for(function()
      return H.slurp(holder.out):find("held")
    end, 60),
      "the peer did not get its connections; " .. H.slurp(holder.err))
    assert.equal(string.format("held %d 0\n", n), H.slurp(holder.out))
    local held = H.proc_stats(p.pid)
    assert.is_true(held.fds >= base.fds + n, string.format(
      "the server holds %d descriptors, %d before", held.fds, base.fds))
    served(port)
    io.open(go, "w"):close()
    assert.equal(0, H.wait_exit(holder, 60), H.slurp(holder.err))
    assert(H.wait_for(function()
      return H.proc_stats(p.pid).fds <= base.fds
    end),
      "the server did not close the connections")
    served(port)
    assert.is_nil(H.exit_status(p))
  end)

  it("survives EMFILE on accept without spinning, and serves again once " ..
     "descriptors free", function()
    local _, code = H.sh("command -v prlimit >/dev/null")
    if code ~= 0 then return pending("needs prlimit") end
    local p = H.spawn_script(LINE_SERVER, "",
      { prefix = "prlimit --nofile=64:64" })
    local port = H.read_port(p)
    local base = H.proc_stats(p.pid)
    local clients = {}
    H.defer(function() for _, c in ipairs(clients) do c:close() end end)
    for _ = 1, 100 do
      local c = sr.connect("127.0.0.1", port, { timeout = 2 })
      if c then
        clients[#clients + 1] = c
        c:settimeout(2)
        c:write("hi\n")
      end
    end
    assert(H.wait_for(function() return H.proc_stats(p.pid).fds >= 60 end),
      "the server never reached its limit")
    local before = H.proc_stats(p.pid)
    sr.sleep(1)
    local after = H.proc_stats(p.pid)
    assert.is_nil(H.exit_status(p), H.slurp(p.err))
    assert.is_true(after.cpu - before.cpu < 0.5, string.format(
      "the server used %.2f s of CPU in 1 s at its limit",
      after.cpu - before.cpu))
    for _, c in ipairs(clients) do c:close() end
    assert(H.wait_for(function() return pcall(served, port) end, 10, 0.05),
      "the server did not serve again")
    assert(H.wait_for(function()
      return H.proc_stats(p.pid).fds <= base.fds
    end),
      "the server did not close the connections")
    assert.is_nil(H.exit_status(p), H.slurp(p.err))
  end)
end)

describe("the binary's shutdown", function()
  -- Each connection sends a request line; "stop" calls sr.stop(); others
  -- wait for a second line before answering "done". The handler prints
  -- what it got, "done", and "closed" from a to-be-closed variable.
  local SERVER = [[
local sr = require "sockrun"
io.stdout:setvbuf("line")
sr.grace = tonumber(arg[1])
local srv = assert(sr.listen("127.0.0.1", 0, function(c)
  local _ <close> = setmetatable({},
    { __close = function() print("closed") end })
  local req = c:read("l")
  if not req or req == "quit" then return end
  print("got " .. req)
  if req == "stop" then return sr.stop() end
  c:read("l")
  c:write("done\n")
  print("done")
end))
print((select(2, srv:getsockname())))
]]

  -- Start the server with a grace of `grace` seconds; a client that made
  -- its request (the handler waits). Returns process, port, client.
  local function start(grace)
    local p = H.spawn_script(SERVER, tostring(grace))
    local port = H.read_port(p)
    local c = H.connect(port)
    c:settimeout(10)
    c:write("req\n")
    assert(H.wait_for(function() return H.slurp(p.out):find("got req") end))
    return p, port, c
  end

  -- Wait until connections to port are refused (a probe that gets in
  -- first is closed at once; its handler ends).
  local function refused(port)
    return H.wait_for(function()
      local s, _, code = sr.connect("127.0.0.1", port, { timeout = 2 })
      if s then
        s:write("quit\n")
        s:close()
        return false
      end
      return code == "ECONNREFUSED"
    end)
  end

  it("stops accepting on SIGTERM, lets a handler finish within the grace, " ..
     "and exits 0", function()
    local p, port, c = start(30)
    assert(H.kill(p, "TERM"))
    assert(refused(port), "still accepting")
    c:write("finish\n")
    assert.equal("done", c:read("l"))
    H.assert_eof(c:read("l"))
    assert.equal(0, H.wait_exit(p), H.slurp(p.err)) -- well before the grace
    local out = H.slurp(p.out)
    assert.matches("got req\n", out, 1, true)
    assert.matches("done\nclosed\n", out, 1, true)
  end)

  it("cancels on SIGINT a handler still running after the grace, closing " ..
     "its connection, and exits 0", function()
    local p, port, c = start(0.2)
    assert(H.kill(p, "INT"))
    H.assert_eof(c:read("l"))
    assert.equal(0, H.wait_exit(p), H.slurp(p.err))
    local out = H.slurp(p.out)
    assert.matches("got req\n", out, 1, true)
    assert.matches("closed\n", out, 1, true) -- its <close> variable ran
    assert.is_falsy(out:find("done", 1, true))
    assert.is_nil((sr.connect("127.0.0.1", port)))
  end)

  it("does the same on sr.stop() from the script", function()
    local p, port, c = start(30)
    local s = H.connect(port)
    s:write("stop\n")
    assert(refused(port), "still accepting")
    c:write("finish\n")
    assert.equal("done", c:read("l"))
    H.assert_eof(c:read("l"))
    assert.equal(0, H.wait_exit(p), H.slurp(p.err))
    assert.matches("done\n", H.slurp(p.out), 1, true)
  end)

  it("exits at once on a second signal", function()
    local p, port, c = start(60)
    assert(H.kill(p, "TERM"))
    assert(refused(port), "still accepting")
    assert(H.kill(p, "TERM"))
    assert.equal(0, H.wait_exit(p, 20), H.slurp(p.err)) -- well before the grace
    local data, _, code = c:read("l")
    assert.is_nil(data)
    assert.is_truthy(code == "EOF" or code == "ECONNRESET", code)
  end)
end)

describe("a script's mistakes", function()
  it("cost the failing task or handler only, and are reported with a " ..
     "traceback", function()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        local line = c:read("l")
        if line == "boom" then error("handler boom") end
        c:write(line, "\n")
      end))
      local _, port = srv:getsockname()
      local function ask(text)
        local c <close> = assert(sr.connect("127.0.0.1", port))
        c:settimeout(5)
        c:write(text, "\n")
        local line, _, code = c:read("l")
        return line or code
      end
      local t = sr.spawn(function() sr.sleep(0.01); local x; return x.field end)
      local s = sr.spawn(function()
        table.sort({ 3, 1, 2 }, function(a, b) sr.sleep(0); return a < b end)
      end)
      print(ask("boom"))
      print(ask("hello"))
      print((select(3, t:join())))
      print((select(3, s:join())))
      print(ask("again"))
      srv:close()
    ]])
    assert.equal(0, code, err)
    assert.equal("EOF\nhello\nETASK\nETASK\nagain\n", out)
    assert.matches("sockrun: [^\n]*handler boom\nstack traceback:", err)
    assert.matches("sockrun: [^\n]*attempt to index a nil value[^\n]*\n" ..
      "stack traceback:", err)
    assert.matches("sockrun: [^\n]*use sr.spawn\nstack traceback:", err)
    assert.matches("table.sort", err, 1, true)
  end)

  it("report an error in __gc of a user object as a Lua warning, " ..
     "and go on", function()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      local t = sr.spawn(function()
        setmetatable({}, { __gc = function() error("gc boom") end })
        collectgarbage()
        collectgarbage()
        sr.sleep(0.01)
        return "task on"
      end)
      print(t:join())
      print("main on")
    ]])
    assert.equal(0, code, err)
    assert.equal("task on\nmain on\n", out)
    assert.matches("Lua warning: [^\n]*__gc[^\n]*gc boom", err)
  end)

  it("give a clear error for a blocking call across a C boundary, costing " ..
     "that task only", function()
    local _, port = H.echo_server()
    local reports = {}
    H.quiet_errors(function(err, traceback)
      reports[#reports + 1] = traceback or err
    end)
    local other = sr.spawn(function()
      local c <close> = assert(sr.connect("127.0.0.1", port))
      c:settimeout(5)
      c:write("x")
      sr.sleep(0.1)
      return c:read(1)
    end)
    local blocking = {
      sort = function()
        table.sort({ 3, 1, 2 }, function(a, b) sr.sleep(0); return a < b end)
      end,
      lt = function()
        local mt = { __lt = function(a, b) sr.sleep(0); return a.v < b.v end }
        table.sort({ setmetatable({ v = 2 }, mt), setmetatable({ v = 1 }, mt) })
      end,
      tostring = function()
        tostring(setmetatable({},
          { __tostring = function() sr.sleep(0); return "x" end }))
      end,
      gsub = function()
        ("ab"):gsub(".", function(ch) sr.sleep(0); return ch end)
      end,
    }
    for name, fn in pairs(blocking) do
      local t = sr.spawn(fn)
      local ok, msg, code = t:join(5)
      assert.is_nil(ok, name)
      assert.equal("ETASK", code, name)
      assert.matches("use sr.spawn", msg, 1, true)
    end
    assert.equal(4, #reports)
    for _, r in ipairs(reports) do
      assert.matches("stack traceback:", r, 1, true)
    end
    assert.equal("x", other:join(5))
    served(port)
  end)

  it("give a clear error for a second reader or writer of a socket, and no " ..
     "corruption", function()
    H.quiet_errors()
    local c, a = pair()
    local first = sr.spawn(function() return c:read("l") end)
    local second = sr.spawn(function() return c:read("l") end)
    local ok, msg, code = second:join(5)
    assert.is_nil(ok)
    assert.equal("ETASK", code)
    assert.matches("socket is busy: another task is already reading on it",
      msg, 1, true)
    H.raises(function() return c:read("l") end, "socket is busy")
    a:write("for the first\nnext\n")
    assert.equal("for the first", first:join(5))
    assert.equal("next", c:read("l"))
    -- two writers: the first waits above the high-water mark
    local writer = sr.spawn(function()
      for i = 1, 256 do
        if not c:write(block(i)) then return "failed" end
      end
      return "written"
    end)
    assert.equal("waiting", writer:status())
    local rival = sr.spawn(function() return c:write("x") end)
    ok, msg, code = rival:join(5)
    assert.is_nil(ok)
    assert.equal("ETASK", code)
    assert.matches("socket is busy: another task is already writing on it",
      msg, 1, true)
    for i = 1, 256 do
      if a:read(CHUNK) ~= block(i) then error("chunk " .. i .. " differs") end
    end
    assert.equal("written", writer:join(5))
    c:close()
    a:close()
  end)
end)

describe("the lifetime of sockets and of the loop", function()
  it("closes garbage-collected sockets", function()
    local ends, port = line_server()
    local sockets = H.proc_stats(H.pid()).sockets
    local nsock = sr._core.counts()
    local function connect_and_forget()
      for _ = 1, 20 do
        local c = assert(sr.connect("127.0.0.1", port))
        c:write("hi\n")
      end
    end
    connect_and_forget()
    assert(H.wait_for(function() return ends.lines == 20 end))
    collectgarbage()
    collectgarbage()
    assert(H.wait_for(function() return #ends == 20 end),
      "the peers saw no end")
    for i = 1, 20 do
      -- RST when the echoed line was still unread in the kernel
      assert.is_truthy(ends[i] == "EOF" or ends[i] == "ECONNRESET", ends[i])
    end
    assert(H.wait_for(function() return sr._core.counts() <= nsock end))
    local now = H.wait_for(function()
      local n = H.proc_stats(H.pid()).sockets
      return n <= sockets and n
    end) or H.proc_stats(H.pid()).sockets
    assert.equal(sockets, now, "sockets open before and after")
  end)

  it("wakes a task waiting on a socket that is closed once, " ..
     "with EBADF", function()
    local c1, a1 = pair() -- c1 is read
    local c2, a2 = pair() -- a2 is written to c2, which reads nothing
    local l = assert(sr.socket("inet", "stream"))
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen())
    local wakes = { read = 0, write = 0, accept = 0 }
    local results = {}
    local function waiter(name, fn)
      return sr.spawn(function()
        results[name] = table.pack(fn())
        wakes[name] = wakes[name] + 1
      end)
    end
    local tasks = {
      waiter("read", function() return c1:read("l") end),
      waiter("accept", function() return l:accept() end),
      waiter("write", function()
        for i = 1, 1024 do
          local ok, msg, code = a2:write(block(i))
          if not ok then return ok, msg, code end
        end
      end),
    }
    for _, t in ipairs(tasks) do assert.equal("waiting", t:status()) end
    c1:close()
    l:close()
    a2:close()
    sr.sleep(0.05)
    for _, t in ipairs(tasks) do assert.equal("done", t:status()) end
    assert.same({ read = 1, write = 1, accept = 1 }, wakes)
    for name, r in pairs(results) do
      assert.same({ n = 3, nil, "socket is closed", "EBADF" }, r, name)
    end
    H.assert_eof(a1:read("l"))
    a1:close()
    c2:close()
  end)

  -- Things left pending when the state closes: a handler waiting, queued
  -- writes, a sleeper, a signal watcher, a datagram receive, a lookup.
  local PENDING = [[
local sr = require "sockrun"
local srv = assert(sr.listen("127.0.0.1", 0, function(c) c:read("l") end))
local c = assert(sr.connect("127.0.0.1", (select(2, srv:getsockname()))))
local l = assert(sr.socket("inet", "stream"))
assert(l:bind("127.0.0.1", 0))
assert(l:listen())
local w = assert(sr.connect("127.0.0.1", (select(2, l:getsockname()))))
local a = assert(l:accept())
sr.spawn(function()
  local big = ("w"):rep(1 << 20)
  for _ = 1, 64 do w:write(big) end
end)
sr.spawn(function() sr.sleep(60) end)
sr.signal("SIGUSR2", function() end)
local u = assert(sr.udp("127.0.0.1", 0))
sr.spawn(function() u:recvfrom() end)
sr.spawn(function() sr.resolve("localhost") end)
sr.spawn(function() return w:read("l") end)
sr.sleep(0.05)
io.stdout:write("pending\n")
io.stdout:flush()
]]

  local function assert_clean_exit(want, out, err, code)
    assert.equal(want, code, err)
    assert.equal("pending\n", out)
    for _, bad in ipairs({ "AddressSanitizer", "runtime error", "LeakSanitizer",
                           "Segmentation", "Abort", "core dumped" }) do
      assert.is_falsy(err:find(bad, 1, true), err)
    end
    return err
  end

  local endings = {
    { "sr.shutdown(0)", "sr.shutdown(0)", 0 },
    { "os.exit(0, true) in the main chunk", "os.exit(0, true)", 0 },
    { "os.exit(3) without closing the state", "os.exit(3)", 3 },
    { "os.exit(4, true) in a task woken by a timer",
      "sr.spawn(function() sr.sleep(0.01); os.exit(4, true) end)", 4 },
    { "os.exit(5, true) in a connection handler",
      "local s = assert(sr.listen('127.0.0.1', 0, function()\n" ..
      "  os.exit(5, true)\nend))\n" ..
      "local x = sr.connect('127.0.0.1', (select(2, s:getsockname())))", 5 },
  }
  for _, e in ipairs(endings) do
    it("runs no callback into a dead state when the binary ends by " ..
       e[1], function()
      local err = assert_clean_exit(e[3], H.run_script(PENDING .. e[2] .. "\n"))
      assert.equal("", err)
    end)
  end

  it("runs no callback into a dead state when the main chunk of the binary " ..
     "fails", function()
    local err = assert_clean_exit(1, H.run_script(PENDING ..
      "sr.spawn(function() sr.sleep(0.05); sr.shutdown(0) end)\n" ..
      "error('main fails')\n"))
    assert.matches("main fails", err, 1, true)
  end)

  local host_endings = {
    { "lua_close at exit", "", 0 },
    { "os.exit(0, true) in a task while sr.run runs",
      "sr.spawn(function() sr.sleep(0.01); os.exit(0, true) end)\n" ..
      "sr.run()", 0 },
    { "os.exit(6) without closing the state", "os.exit(6)", 6 },
  }
  for _, e in ipairs(host_endings) do
    it("runs no callback into a dead state when a host application " ..
       "ends by " .. e[1], function()
      local err = assert_clean_exit(e[3], H.run_lua(PENDING .. e[2] .. "\n"))
      assert.equal("", err)
    end)
  end

  it("tells a finalizer that runs after the loop's that sockrun is closed",
    function()
      -- an object given __gc before require "sockrun" is finalized after
      -- the loop, at lua_close: the calls it makes must not touch freed memory
      local out, err, code = H.run_lua([[
local sr, task, sock
local late = setmetatable({}, { __gc = function()
  print(pcall(sr.now))
  print(pcall(task.cancel, task))
  print(pcall(sr.spawn, print))
  print(sock:read())
end })
sr = require "sockrun"
task = sr.spawn(function() sr.sleep(60) end)
sock = sr.udp("127.0.0.1", 0)
]])
      assert.equal(0, code, err)
      assert.equal("", err)
      local closed = "false\tsockrun is closed: the Lua state is closing\n"
      assert.equal(closed .. closed .. closed ..
        "nil\tsocket is closed\tEBADF\n", out)
    end)
end)

describe("running out of memory", function()
  -- A host whose allocator fails on demand (lua-failalloc, tools/lua-host.c): what
  -- fails while the loop runs a callback must fail there, not unwind out
  -- of the loop and leave it wedged.
  local function run_failing(src)
    return H.run_lua(src, assert(os.getenv("LUA_FAILALLOC"),
      "LUA_FAILALLOC names tools/lua-failalloc (make test sets it)"))
  end

  it("fails the task that ran out in a callback alone; the loop runs on",
    function()
      local out, err, code = run_failing([[
        local sr = require "sockrun"
        local t
        local ok, err = pcall(sr.run, function()
          t = sr.current()
          sr.sleep(0.01) -- from here on resumed by the loop
          failalloc(0)
          local big = {}
          for i = 1, 1e6 do big[i] = i end
        end)
        failalloc(nil)
        print(ok, err, t:status(), select(2, sr._core.counts()))
        print(pcall(sr.run, function() sr.sleep(0.01) end))
      ]])
      assert.equal(0, code, err)
      assert.equal("true\ttrue\tfailed\t0\t0\ntrue\ttrue\n", out)
      assert.matches("not enough memory", err)
    end)

  it("fails the writes after one that sent part and could not queue the rest",
    function()
      local out, err, code = run_failing([[
        local sr = require "sockrun"
        local got = {}
        local srv = assert(sr.listen("127.0.0.1", 0, function(c)
          sr.sleep(0.2) -- so that the write sends part and queues the rest
          while true do
            local d = c:read()
            if not d then break end
            got[#got + 1] = d
          end
        end))
        local c = assert(sr.connect("127.0.0.1", select(2, srv:getsockname())))
        local a, b = ("a"):rep(16 << 20), ("b"):rep(16 << 20)
        collectgarbage()
        collectgarbage("stop")
        failalloc(0)
        local ok = pcall(c.write, c, a, b)
        failalloc(nil)
        collectgarbage("restart")
        print(ok, select(3, c:write("X")))
        c:close()
        sr.sleep(1)
        print((table.concat(got):find("X", 1, true)))
        srv:close()
      ]])
      assert.equal(0, code, err)
      -- no "X" after a hole in the stream
      assert.equal("false\tENOMEM\nnil\n", out)
    end)

  it("loses the signal delivered as memory ran out alone; the loop runs on",
    function()
      local out, err, code = run_failing([[
        local sr = require "sockrun"
        local pid = io.open("/proc/self/stat"):read("l"):match("^%d+")
        local got = 0
        sr.signal("SIGUSR1", function() got = got + 1 end)
        print(pcall(sr.run, function()
          os.execute("kill -USR1 " .. pid)
          failalloc(0)
          sr.sleep(0.05)
          failalloc(nil)
        end))
        print(pcall(sr.run, function()
          os.execute("kill -USR1 " .. pid)
          sr.sleep(0.05)
        end))
        print(got)
      ]])
      assert.equal(0, code, err)
      assert.equal("true\ttrue\ntrue\ttrue\n1\n", out)
      assert.matches("cannot run a signal handler: not enough memory", err)
    end)
end)

describe("signal dispositions", function()
  -- A host application: prints its signal masks before and after
  -- require "sockrun", then writes to a peer that reset the connection and
  -- to one that closed it (EPIPE), and prints the masks again.
  local HOST = [[
local function masks()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  local t = {}
  for _, k in ipairs({ "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt" }) do
    t[#t + 1] = k .. "=" .. s:match(k .. ":%s*(%x+)")
  end
  return table.concat(t, " ")
end
print(masks())
local sr = require "sockrun"
print(masks())
local l = assert(sr.socket("inet", "stream"))
assert(l:bind("127.0.0.1", 0))
assert(l:listen())
local port = select(2, l:getsockname())
for _, how in ipairs({ "reset", "closed" }) do
  local c = assert(sr.connect("127.0.0.1", port))
  local a = assert(l:accept())
  if how == "reset" then a:setsockopt("linger", 0) end
  a:close()
  sr.sleep(0.05)
  local codes = {}
  for _ = 1, 4 do
    local ok, _, code = c:write(("x"):rep(100000))
    codes[#codes + 1] = ok and "ok" or code
    sr.sleep(0.01) -- the peer's RST comes in
  end
  print(how, table.concat(codes, " "))
  c:close()
end
l:close()
print(masks())
]]

  local function run_host(prefix)
    local path = H.tmpfile(HOST, ".lua")
    local out, code = H.sh(string.format("timeout 20 sh -c %s 2>&1",
      H.q(prefix .. "exec " .. H.q(H.interpreter()) .. " " .. H.q(path))))
    assert.equal(0, code, out)
    local lines = {}
    for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.equal(5, #lines, out)
    assert.equal(lines[1], lines[2], "require changed the signal dispositions")
    assert.equal(lines[1], lines[5], "writing changed the signal dispositions")
    assert.matches("^reset\t.*E%u+", lines[3]) -- ECONNRESET (or EPIPE)
    assert.matches("^closed\t.*EPIPE", lines[4])
    return lines[1]
  end

  it("are the host's own after require, with SIGPIPE at its default", function()
    local masks = run_host("")
    local ign = tonumber(masks:match("SigIgn=(%x+)"), 16)
    assert.equal(0, ign & 0x1000) -- SIGPIPE (13) at its default
  end)

  it("are the host's own after require, when it ignores SIGPIPE and " ..
     "others", function()
    local masks = run_host("trap '' PIPE USR1 TERM; ")
    local ign = tonumber(masks:match("SigIgn=(%x+)"), 16)
    assert.equal(0x1000, ign & 0x1000) -- SIGPIPE (13)
    assert.equal(0x200, ign & 0x200) -- SIGUSR1 (10)
    assert.equal(0x4000, ign & 0x4000) -- SIGTERM (15)
  end)

  it("never kill the binary by SIGPIPE", function()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        local how = c:read("l")
        if how == "reset" then c:setsockopt("linger", 0) end
      end))
      local port = select(2, srv:getsockname())
      local failed = 0
      for i = 1, 20 do
        local c <close> = assert(sr.connect("127.0.0.1", port))
        c:write(i % 2 == 0 and "reset\n" or "close\n")
        for _ = 1, 100 do
          sr.sleep(0.002) -- the loop runs: the peer's FIN or RST comes in
          if not c:write(("x"):rep(10000)) then
            failed = failed + 1
            break
          end
        end
      end
      srv:close()
      print("failed writes", failed)
    ]])
    assert.equal(0, code, err)
    assert.equal("failed writes\t20\n", out)
    assert.equal("", err)
  end)
end)

describe("random interleavings", function()
  -- spec/chaos.lua: clients of a dozen kinds (echo, lines, numbers, big
  -- downloads, timeouts, datagrams, name lookups, joins, signals, sockets
  -- left to the collector...) against a server of as many habits, a dozen
  -- at a time, while a monkey cancels their tasks, closes their sockets and
  -- shortens their timeouts. The seed fixes the choices, not the timing.
  local function chaos(cmd, seed)
    local errpath = H.tmpfile("")
    local out, code = H.sh(string.format("timeout 60 %s spec/chaos.lua %d 200 2>%s",
      cmd, seed, H.q(errpath)))
    local err = H.slurp(errpath)
    assert.equal(0, code, err)
    assert.equal("", err)
    assert.not_matches("FAILURE", out)
    -- it did what it is for: data checked, and meddled with
    for _, key in ipairs({ "echo.same", "lines.same", "sum.same", "big.all",
                           "udp.done", "resolve.ok", "joins.ok" }) do
      assert.matches(" " .. key:gsub("%.", "%%.") .. "=%d", out)
    end
    assert.matches("monkey%.c%a+=%d", out)
  end

  it("keeps data whole, errors well formed, and leaves no socket, task " ..
     "or socket descriptor behind, in the binary", function()
    chaos(H.q(H.sockrun), 1)
  end)

  it("... and under a plain interpreter", function()
    chaos(H.q(H.interpreter()), 2)
  end)
end)
