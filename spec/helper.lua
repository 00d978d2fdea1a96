-- Shared by the specs: the module under test, a check that a test left no
-- socket or task behind, and ways to run the sockrun binary and peers.
local sr = require "sockrun"

local H = { sr = sr }

--- Path of the sockrun binary under test (make test sets SOCKRUN).
H.sockrun = os.getenv("SOCKRUN") or "build/sockrun"

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

--- A TCP echo server on 127.0.0.1 and a free port; returns server, port.
function H.echo_server(host)
  local srv = assert(sr.listen(host or "127.0.0.1", 0, function(c)
    while true do
      local data = c:read()
      if not data then return end
      c:write(data)
    end
  end))
  local _, port = srv:getsockname()
  return srv, port
end

--- A fresh path for a unix socket.
local counter = 0
function H.tmppath(name)
  counter = counter + 1
  return string.format("/tmp/sockrun-spec-%d-%d-%s", H.pid(), counter,
    name or "sock")
end

local pid
function H.pid()
  if not pid then
    local f = io.open("/proc/self/stat")
    pid = f and f:read("n") or math.random(1e6)
    if f then f:close() end
  end
  return pid
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

--- Write a Lua script to a temporary file and return its path.
function H.script(src)
  local base = os.tmpname() -- creates the file: keep the name, drop the file
  os.remove(base)
  local path = base .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

--- Run the sockrun binary with a script (source text) and arguments,
-- bounded by `timeout` seconds; returns stdout, stderr, exit status.
function H.run_script(src, args, timeout)
  local path = H.script(src)
  local errpath = os.tmpname()
  local cmd = string.format("timeout %d %s %s %s 2>%s", timeout or 10,
    H.q(H.sockrun), H.q(path), args or "", H.q(errpath))
  local out, code = H.sh(cmd)
  local f = io.open(errpath)
  local err = f:read("a")
  f:close()
  os.remove(errpath)
  os.remove(path)
  return out, err, code
end

return H
