-- Shared by the specs: the module under test, a check that a test left no
-- socket or task behind, cleanups that run after each test, assertions for
-- the error convention, and ways to run the sockrun binary and peers.
local sr = require "sockrun"
-- busted's assert (luassert), as the spec files see it.
local assert = require "luassert"

local H = { sr = sr }

--- Absolute path of the sockrun binary under test (make test sets SOCKRUN).
H.sockrun = os.getenv("SOCKRUN") or "build/sockrun"
if H.sockrun:sub(1, 1) ~= "/" then
  H.sockrun = (os.getenv("PWD") or ".") .. "/" .. H.sockrun
end

-- Cleanups ------------------------------------------------------------------

local deferred = {}

--- Run fn when the test ends, pass or fail (needs after_each(H.run_deferred)).
function H.defer(fn) deferred[#deferred + 1] = fn end

--- For after_each: run the deferred cleanups, the last one first.
function H.run_deferred()
  local list = deferred
  deferred = {}
  for i = #list, 1, -1 do pcall(list[i]) end
end

--- Let pending closes finish, then return live sockets and tasks.
function H.settle()
  local core = sr._core
  for _ = 1, 200 do
    local nsock, ntask = core.counts()
    if nsock == 0 and ntask == 0 then return 0, 0 end
    sr.step()
    local s, t = core.counts()
    if s ~= 0 or t ~= 0 then sr.sleep(0.005) end
  end
  return core.counts()
end

--- For after_each: fail the test that left a socket or task behind.
function H.assert_clean()
  local nsock, ntask = H.settle()
  assert(nsock == 0, nsock .. " socket(s) left open by this test")
  assert(ntask == 0, ntask .. " task(s) left running by this test")
end

--- For after_each: collect the sockets a failed test left unreferenced (and
-- so close them), so that they do not spill into the next test.
function H.collect()
  collectgarbage()
  collectgarbage()
  H.settle()
end

--- Replace the report of failed tasks by `hook` (default: silence) until
-- the test ends (see H.defer).
function H.quiet_errors(hook)
  sr.onerror(hook or function() end)
  H.defer(function() sr.onerror(nil) end)
end

-- Assertions ----------------------------------------------------------------

--- Run fn as a task, bounded by `seconds` (default 10), and fail the test
-- with the task's error if it fails.
function H.in_task(fn, seconds)
  local t = sr.spawn(function() fn(); return true end)
  local ok, err, code = t:join(seconds or 10)
  if ok == nil and code == "ETIMEDOUT" then t:cancel() end
  assert(ok, err)
end

--- fn() must raise a string error containing every given plain string;
-- returns the error.
function H.raises(fn, ...)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  assert.equal("string", type(err), "expected a string error")
  for i = 1, select("#", ...) do
    local want = select(i, ...)
    assert.is_truthy(err:find(want, 1, true),
      string.format("expected %q in the error %q", want, err))
  end
  return err
end

--- Assert that `...` is exactly nil, `msg`, `code` (each any string when
-- nil); returns the message and the code.
function H.assert_fail_msg(msg, code, ...)
  assert.equal(3, select("#", ...), "expected exactly nil, message, code")
  local ok, m, c = ...
  assert.is_nil(ok)
  if msg then assert.equal(msg, m) else assert.equal("string", type(m)) end
  if code then assert.equal(code, c) else assert.equal("string", type(c)) end
  return m, c
end

--- Assert that `...` is exactly nil, a message, `code` (any string when nil).
function H.assert_fail(code, ...) return H.assert_fail_msg(nil, code, ...) end

--- Assert that `...` is what joining a failed task gives: nil, a message,
-- "ETASK", the error object; returns the message and the object.
function H.assert_task_failed(...)
  assert.equal(4, select("#", ...), "expected nil, message, \"ETASK\", error")
  local ok, m, c, obj = ...
  assert.is_nil(ok)
  assert.equal("string", type(m))
  assert.equal("ETASK", c)
  return m, obj
end

--- Assert that `...` is exactly nil, "socket is closed", "EBADF".
function H.assert_closed(...)
  H.assert_fail_msg("socket is closed", "EBADF", ...)
end

--- Assert that `...` is exactly nil, "end of file", "EOF".
function H.assert_eof(...)
  H.assert_fail_msg("end of file", "EOF", ...)
end

--- Assert that `...` is exactly nil, "timeout", "ETIMEDOUT".
function H.assert_timeout(...)
  H.assert_fail_msg("timeout", "ETIMEDOUT", ...)
end

--- Assert that `...` is exactly nil, a message, an "EAI_*" code.
function H.assert_eai(...)
  local _, code = H.assert_fail(nil, ...)
  assert.matches("^EAI_", code)
end

-- Sockets -------------------------------------------------------------------

--- A handler for sr.listen that sends every line back.
function H.echo(c)
  for line in c:lines("L") do c:write(line) end
end

--- A server on host (default 127.0.0.1) and a free port, handing each
-- connection to `handler`; closed when the test ends (see H.defer).
-- Returns server, port.
function H.server(handler, host)
  local srv = assert(sr.listen(host or "127.0.0.1", 0, handler))
  H.defer(function() srv:close() end)
  local _, port = srv:getsockname()
  return srv, port
end

--- A TCP echo server (every chunk back) like H.server; returns server, port.
function H.echo_server(host)
  return H.server(function(c)
    while true do
      local data = c:read()
      if not data then return end
      c:write(data)
    end
  end, host)
end

--- A raw TCP socket listening on 127.0.0.1 and a free port, for a test that
-- accepts by itself; closed when the test ends. Returns socket, port.
function H.listener()
  local l = assert(sr.socket("inet", "stream"))
  H.defer(function() l:close() end)
  assert(l:bind("127.0.0.1", 0))
  assert(l:listen())
  local _, port = l:getsockname()
  return l, port
end

--- A client connected to 127.0.0.1:port, closed when the test ends.
function H.connect(port)
  local c = assert(sr.connect("127.0.0.1", port))
  H.defer(function() c:close() end)
  return c
end

--- A socket of family (default "inet") and type (default "stream"),
-- already closed.
function H.closed_socket(family, kind)
  local s = assert(sr.socket(family or "inet", kind or "stream"))
  s:close()
  return s
end

--- A test body: fn(a, a_address, b, b_address) on two sockets as make()
-- makes them (a socket and its address each), both closed when fn returns.
function H.on_two(make, fn)
  return function()
    local a, a_address = make()
    local b, b_address = make()
    fn(a, a_address, b, b_address)
    a:close()
    b:close()
  end
end

--- A port on 127.0.0.1 that nothing listens on (bound, read back, freed);
-- kind is "tcp" (default) or "udp".
function H.free_port(kind)
  local s
  if kind == "udp" then
    s = assert(sr.udp("127.0.0.1", 0))
  else
    s = assert(sr.socket("inet", "stream"))
    assert(s:bind("127.0.0.1", 0))
  end
  local _, port = s:getsockname()
  s:close()
  return port
end

--- A connected pair (client, accepted) over TCP on 127.0.0.1 (kind "tcp",
-- the default) or a unix stream socket (kind "unix"). Both get a generous
-- timeout so that a broken test fails instead of hanging.
function H.pair(kind)
  local l, c
  if kind == "unix" then
    local path = H.tmppath()
    l = assert(sr.socket("unix", "stream"))
    assert(l:bind(path))
    assert(l:listen())
    c = assert(sr.socket("unix", "stream"))
    assert(c:connect(path))
  else
    local port
    l, port = H.listener()
    c = assert(sr.socket("inet", "stream"))
    assert(c:connect("127.0.0.1", port))
  end
  local a = assert(l:accept())
  l:close()
  c:settimeout(10)
  a:settimeout(10)
  return c, a
end

-- Files and processes -------------------------------------------------------

local pid

--- The PID of this process.
function H.pid()
  if not pid then
    local f = io.open("/proc/self/stat")
    pid = f and f:read("n") or math.random(1e6)
    if f then f:close() end
  end
  return pid
end

local counter = 0

--- A fresh path for a unix socket, removed when the test ends whatever
-- happened (see H.defer).
function H.tmppath(name)
  counter = counter + 1
  local path = string.format("/tmp/sockrun-spec-%d-%d-%s", H.pid(), counter,
    name or "sock")
  H.defer(function() os.remove(path) end)
  return path
end

--- The whole content of a file ("" when it cannot be read).
function H.slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

--- Write content to a fresh temporary file whose name ends in `suffix`;
-- returns its path. Not removed: see H.tmpfile.
local function write_tmp(content, suffix)
  local base = os.tmpname() -- creates the file: keep the name, drop the file
  local path = base .. (suffix or "")
  if path ~= base then os.remove(base) end
  local f = assert(io.open(path, "w"))
  f:write(content or "")
  f:close()
  return path
end

--- A temporary file with `content`, its name ending in `suffix`; removed
-- when the test ends (see H.defer). Returns its path.
function H.tmpfile(content, suffix)
  local path = write_tmp(content, suffix)
  H.defer(function() os.remove(path) end)
  return path
end

--- Run a shell command, return its stdout, and exit status.
function H.sh(cmd)
  local p = io.popen(cmd, "r")
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

--- Quote a string for the shell.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Run the sockrun binary with a shell-quoted argument string; returns
-- stdout, stderr, exit status (128+N when killed by signal N; 124 on
-- timeout). opts: stdin (text), cwd, env (a prefix such as
-- "env -u LUA_PATH"), timeout (seconds, default 10).
function H.run(args, opts)
  opts = opts or {}
  local errpath = write_tmp("")
  local inpath = write_tmp(opts.stdin or "")
  local cmd = string.format("%s timeout %s %s %s <%s 2>%s", opts.env or "",
    tostring(opts.timeout or 10), H.q(H.sockrun), args or "", H.q(inpath),
    H.q(errpath))
  if opts.cwd then cmd = "cd " .. H.q(opts.cwd) .. " && " .. cmd end
  local out, code = H.sh(cmd)
  local err = H.slurp(errpath)
  os.remove(errpath)
  os.remove(inpath)
  return out, err, code
end

--- Run the sockrun binary on a script (source text) with a shell-quoted
-- argument string, as H.run with opts; returns stdout, stderr, exit status
-- and the path the script had.
function H.run_script(src, args, opts)
  local path = write_tmp(src, ".lua")
  local out, err, code = H.run(H.q(path) .. " " .. (args or ""), opts)
  os.remove(path)
  return out, err, code, path
end

--- Assert that a run (stdout, stderr, exit status) ended with `status`
-- having printed nothing on stdout; returns its stderr.
function H.assert_exit(status, out, err, code)
  assert.equal(status, code, err)
  assert.equal("", out)
  return err
end

-- Background processes ------------------------------------------------------

--- Poll fn() every `interval` seconds (default 0.01), driving the loop in
-- between, for at most `seconds` (default 10); returns fn's first true
-- result, or nil when the time ran out.
function H.wait_for(fn, seconds, interval)
  local deadline = sr.now() + (seconds or 10)
  while true do
    local v = fn()
    if v then return v end
    if sr.now() >= deadline then return nil end
    sr.sleep(interval or 0.01)
  end
end

--- The exit status of a process from H.spawn (128+N when killed by signal
-- N), or nil while it runs.
function H.exit_status(proc)
  local f = io.open(proc.status)
  if not f then return nil end
  local n = f:read("n")
  f:close()
  return n
end

--- Wait (driving the loop) for at most `seconds` (default 10) for a process
-- from H.spawn to exit; returns its exit status, or nil if it still runs.
function H.wait_exit(proc, seconds)
  return H.wait_for(function() return H.exit_status(proc) end, seconds, 0.02)
end

--- Send signal `sig` ("TERM", "STOP"...) to a process from H.spawn if it
-- still runs; returns whether it was sent.
function H.kill(proc, sig)
  if H.exit_status(proc) then return false end
  return os.execute(string.format("kill -%s %d 2>/dev/null", sig, proc.pid))
    == true
end

--- Start a shell command in the background, stdin from /dev/null, stdout
-- and stderr to files. Returns a process {pid =, out = path, err = path}
-- (for H.exit_status, H.wait_exit, H.kill); pid is the command's own when
-- it is a simple command (prefixes that exec, as env or prlimit, keep it).
-- Killed (SIGCONT, then SIGKILL) if it still runs when the test ends (see
-- H.defer).
function H.spawn(cmd)
  local out, err, status = write_tmp(""), write_tmp(""), write_tmp("")
  os.remove(status) -- appears, atomically, once the command has exited
  local st = H.q(status)
  local p = io.popen(string.format(
    "(%s </dev/null >%s 2>%s & echo $!; wait $!; echo $? >%s.part; " ..
    "mv %s.part %s) 2>/dev/null &", cmd, H.q(out), H.q(err), st, st, st))
  local pid = tonumber(p:read("l"))
  p:close()
  assert(pid, "could not start: " .. cmd)
  local proc = { pid = pid, out = out, err = err, status = status }
  H.defer(function()
    if H.kill(proc, "CONT") then H.kill(proc, "KILL") end
    H.wait_exit(proc, 5)
    os.remove(out)
    os.remove(err)
    os.remove(status)
  end)
  return proc
end

--- Run the sockrun binary on a script (source text) in the background, as
-- H.spawn does; `args` a shell-quoted string, opts.prefix a command prefix
-- (an assignment such as "ASAN_OPTIONS=...", or "prlimit --nofile=64:64").
-- Returns the process.
function H.spawn_script(src, args, opts)
  opts = opts or {}
  local path = H.tmpfile(src, ".lua")
  return H.spawn(string.format("%s %s %s %s", opts.prefix or "",
    H.q(H.sockrun), H.q(path), args or ""))
end

--- Wait (driving the loop) for the first line a process from H.spawn
-- prints to be a number (a port, say), and return it; fails the test with
-- the process's stderr when it does not come within `seconds` (default 10).
function H.read_port(proc, seconds)
  local port = H.wait_for(function()
    return tonumber(H.slurp(proc.out):match("^(%d+)\n"))
  end, seconds)
  assert(port, "no port from the process; stderr: " .. H.slurp(proc.err))
  return port
end

local clock_ticks

--- What /proc says of a running process: rss and hwm (resident and peak
-- resident memory, KiB), fds (open descriptors), sockets (those of them
-- that are sockets: for this process itself, where the pipe of the `ls`
-- that counts may or may not be seen, count these) and cpu (seconds of
-- user and system time); nil when it is gone.
function H.proc_stats(pid)
  local status = H.slurp("/proc/" .. pid .. "/status")
  local rss = tonumber(status:match("VmRSS:%s*(%d+)"))
  if not rss then return nil end
  if not clock_ticks then
    clock_ticks = tonumber((H.sh("getconf CLK_TCK"))) or 100
  end
  local fds, sockets = 0, 0
  local ls = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  for line in ls:lines() do
    if line:find(" -> ", 1, true) then
      fds = fds + 1
      if line:find("-> socket:", 1, true) then sockets = sockets + 1 end
    end
  end
  ls:close()
  -- fields 14 and 15 of stat, counting from the state after the name
  local utime, stime = H.slurp("/proc/" .. pid .. "/stat")
    :match("%) %S+" .. (" %S+"):rep(10) .. " (%d+) (%d+)")
  if not utime then return nil end -- gone meanwhile
  return {
    rss = rss,
    hwm = tonumber(status:match("VmHWM:%s*(%d+)")),
    fds = fds,
    sockets = sockets,
    cpu = (tonumber(utime) + tonumber(stime)) / clock_ticks,
  }
end

local interpreter

--- The Lua interpreter running the specs (lua5.4, or the sanitized one
-- under make sanitize), to run a script as a host application would:
-- `H.interpreter() .. " script.lua"`, LUA_PATH and LUA_CPATH inherited.
function H.interpreter()
  if not interpreter then
    interpreter = H.sh("readlink /proc/" .. H.pid() .. "/exe"):match("[^\n]+")
  end
  return interpreter
end

--- Run the Lua script `src` (source text) as a host application would:
-- with `host` (an interpreter's path; default H.interpreter()), LUA_PATH
-- and LUA_CPATH inherited, bounded to 20 s. Returns stdout, stderr and
-- the exit status.
function H.run_lua(src, host)
  local path = H.tmpfile(src, ".lua")
  local errpath = H.tmpfile("")
  local out, code = H.sh(string.format("timeout 20 %s %s 2>%s",
    H.q(host or H.interpreter()), H.q(path), H.q(errpath)))
  return out, H.slurp(errpath), code
end

--- A listener that never accepts, its backlog filled by connections that
-- completed (so the next connect waits); nil when the system never fills
-- it. Returns listener, port, the filling sockets; all are closed when the
-- test ends (closing them before is fine).
function H.full_listener()
  local l = assert(H.sr.socket("inet", "stream"))
  assert(l:bind("127.0.0.1", 0))
  assert(l:listen(0))
  local _, port = l:getsockname()
  local fillers = {}
  H.defer(function()
    for _, s in ipairs(fillers) do s:close() end
    l:close()
  end)
  for _ = 1, 32 do
    local c = assert(H.sr.socket("inet", "stream"))
    c:settimeout(0.2)
    local ok, _, code = c:connect("127.0.0.1", port)
    fillers[#fillers + 1] = c
    if not ok then
      assert(code == "ETIMEDOUT", code)
      return l, port, fillers
    end
  end
  return nil
end

return H
