--- sockrun: a Lua-scriptable socket runtime over libuv.
-- The C core (`sockrun.core`) holds sockets, tasks and the loop; this
-- module adds what reads better in Lua: host names resolved before
-- bind/connect/sendto, and the one-call helpers sr.connect, sr.listen,
-- sr.udp and s:lines.
-- @module sockrun

local core = require "sockrun.core"

local debug_getinfo, error, type, ipairs, pairs, setmetatable =
    debug.getinfo, error, type, ipairs, pairs, setmetatable
local math_type, string_format = math.type, string.format

local M = {}
local private = { methods = true, counts = true, addrfamily = true,
  stdin = true, isatty = true, ttymode = true, winsize = true, serve = true,
  handlers = true, interruptible = true, unlink_stale = true,
  create_private = true }
for k, v in pairs(core) do
  if not private[k] then M[k] = v end
end

local methods = core.methods
local socket, spawn, resolve, sleep = core.socket, core.spawn, core.resolve,
    core.sleep
local addrfamily = core.addrfamily
local raw_bind, raw_connect, raw_sendto = methods.bind, methods.connect,
    methods.sendto

local THIS_FILE = debug_getinfo(1, "S").source

-- Misuse raises, worded as luaL_argerror words it, at the position of the
-- first caller outside this file (the user's line, not ours).
local function argerror(n, fname, msg)
  local level = 2
  while true do
    local info = debug_getinfo(level, "S")
    if not info or info.source ~= THIS_FILE then break end
    level = level + 1
  end
  error(string_format("bad argument #%d to '%s' (%s)", n, fname, msg), level)
end

local function check_string(v, n, fname)
  if type(v) ~= "string" then
    argerror(n, fname, "string expected, got " .. type(v))
  end
end

-- What a host argument is: "any" ("*" or ""), "inet"/"inet6" (a numeric
-- address), or "name" (to resolve). A numeric-looking host that does not
-- parse, or one of another family than the socket's, is misuse.
local function check_host(host, n, fname, family)
  check_string(host, n, fname)
  if host == "*" or host == "" then return "any" end
  local fam = addrfamily(host)
  if fam then
    if family and fam ~= family then
      argerror(n, fname, "address family does not match the socket (" ..
        family .. ")")
    end
    return fam
  end
  if host:find(":", 1, true) or host:match("^[%d%.]+$")
      or not host:match("^[%w%.%-_]+$") then
    argerror(n, fname, "malformed address")
  end
  return "name"
end

-- A port: an integer, or a float or string with an integer value (8080.0,
-- "8080" as arg[] gives it), as Lua's own luaL_checkinteger takes; the
-- integer it is.
local function check_port(port, n, fname)
  local p = (type(port) == "number" or type(port) == "string") and
      math.tointeger(tonumber(port))
  if not p then
    argerror(n, fname, "port must be an integer, got " ..
      (type(port) == "string" and string_format("%q", port) or type(port)))
  end
  if p < 0 or p > 65535 then argerror(n, fname, "port out of range") end
  return p
end

-- Whether the second argument of connect/listen makes the call the host
-- and port form (else the first is a unix path): a number, or a string
-- that reads as one.
local function is_port(port)
  return type(port) == "number" or
      (type(port) == "string" and tonumber(port) ~= nil)
end

-- A unix socket path: non-empty, fits sun_path, no zero byte unless it
-- names the abstract namespace ("@name" or "\0name").
local function check_path(path, n, fname)
  check_string(path, n, fname)
  if path == "" then argerror(n, fname, "empty unix socket path") end
  -- 108 bytes of sun_path: a path ends with a zero byte, an abstract name
  -- ("@name") does not
  local abstract = path:find("^[@%z]")
  if #path > (abstract and 108 or 107) then
    argerror(n, fname, "unix socket path too long")
  end
  if path:find("\0", 2, true) then
    argerror(n, fname, "unix socket path contains a zero byte")
  end
end

local function check_opts(opts, n, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    argerror(n, fname, "table expected, got " .. type(opts))
  end
  local t, b = opts.timeout, opts.backlog
  if t ~= nil and (type(t) ~= "number" or t ~= t or t < 0) then
    argerror(n, fname, "opts.timeout must be a number >= 0")
  end
  if b ~= nil and (math_type(b) ~= "integer" or b < 0) then
    argerror(n, fname, "opts.backlog must be an integer >= 0")
  end
  return opts
end

-- A numeric address of the given family for host, resolving a name.
local function address_for(host, kind, family, timeout)
  if kind ~= "name" then return host end
  local list, err, code = resolve(host, family, timeout)
  if not list then return nil, err, code end
  if not list[1] then
    return nil, "no " .. family .. " address for " .. host, "EAI_ADDRFAMILY"
  end
  return list[1].addr
end

-- Addresses to try for host, in the resolver's order.
local function addresses(host, kind, timeout)
  if kind == "any" then return { { family = "inet", addr = host } } end
  if kind ~= "name" then return { { family = kind, addr = host } } end
  local list, err, code = resolve(host, "any", timeout)
  if list and not list[1] then
    return nil, "no address for " .. host, "EAI_NONAME"
  end
  return list, err, code
end

-- Holds a socket the library made while a call that creates it can still
-- fail or be cancelled; closes it on the way out unless released.
local guard_mt = { __close = function(g) if g.s then g.s:close() end end }
local function guard(s) return setmetatable({ s = s }, guard_mt) end

-- bind and connect alike: a unix path as it is, or host and port checked
-- and a name resolved (within the connect timeout), then the C call.
local function at_address(self, raw, fname, host, port)
  local family, err, code = self:family()
  if not family then return nil, err, code end
  if family == "unix" then
    check_path(host, 1, fname)
    return raw(self, host)
  end
  local kind = check_host(host, 1, fname, family)
  port = check_port(port, 2, fname)
  local addr
  addr, err, code = address_for(host, kind, family, (self:gettimeouts()))
  if not addr then return nil, err, code end
  return raw(self, addr, port)
end

--- s:bind(host, port) / s:bind(path). "*" is the any-address.
function methods:bind(host, port)
  return at_address(self, raw_bind, "bind", host, port)
end

--- s:connect(host, port) / s:connect(path); names are resolved within the
-- connect timeout.
function methods:connect(host, port)
  return at_address(self, raw_connect, "connect", host, port)
end

--- s:sendto(data, host, port) / s:sendto(data, path) / s:sendto(data).
function methods:sendto(data, host, port)
  if type(data) ~= "string" and type(data) ~= "number" then
    argerror(1, "sendto", "string expected, got " .. type(data))
  end
  local family, err, code = self:family()
  if not family then return nil, err, code end
  if host == nil then return raw_sendto(self, data) end
  if family == "unix" then
    check_path(host, 2, "sendto")
    return raw_sendto(self, data, host)
  end
  local kind = check_host(host, 2, "sendto", family)
  port = check_port(port, 3, "sendto")
  local _, _, wt = self:gettimeouts()
  local addr
  addr, err, code = address_for(host, kind, family, wt)
  if not addr then return nil, err, code end
  return raw_sendto(self, data, addr, port)
end

--- Iterator over s:read(...) (default "l") until end of file or an
-- error, as file:lines: each step gives one value per format (nil for
-- those after a failure) and the loop ends when the first one is nil.
function methods:lines(...)
  local n = select("#", ...)
  if n <= 1 then
    local fmt = ...
    -- lines by default; a datagram socket's are its datagrams, read whole
    if fmt == nil and select(2, self:family()) ~= "dgram" then fmt = "l" end
    return function() return (self:read(fmt)) end
  end
  local fmts = { ... }
  return function()
    local values = table.pack(self:read(table.unpack(fmts, 1, n)))
    if values[1] == nil then return nil end
    for i = 1, n do -- a failure's message and code are not values
      if values[i] == nil then return table.unpack(values, 1, i) end
    end
    return table.unpack(values, 1, n)
  end
end

--- sr.connect(host, port [, opts]) / sr.connect(path [, opts]): a
-- connected stream socket, trying each address of a name in turn.
-- opts.timeout bounds resolution and each connect.
function M.connect(host, port, opts)
  if not is_port(port) then -- unix path
    check_path(host, 1, "connect")
    local timeout = check_opts(port, 2, "connect").timeout
    local s, err, code = socket("unix", "stream")
    if not s then return nil, err, code end
    local g <close> = guard(s)
    s:settimeout(timeout)
    local ok
    ok, err, code = raw_connect(s, host)
    if not ok then return nil, err, code end
    s:settimeout(nil)
    g.s = nil
    return s
  end
  local kind = check_host(host, 1, "connect")
  port = check_port(port, 2, "connect")
  local timeout = check_opts(opts, 3, "connect").timeout
  local list, err, code = addresses(host, kind, timeout)
  if not list then return nil, err, code end
  for _, a in ipairs(list) do
    local s
    s, err, code = socket(a.family, "stream")
    if s then
      local g <close> = guard(s)
      s:settimeout(timeout)
      local ok
      ok, err, code = raw_connect(s, a.addr, port)
      if ok then
        s:settimeout(nil)
        g.s = nil
        return s
      end
    end
  end
  return nil, err, code
end

-- Every listening socket sr.listen made, so a shutdown can stop them
-- accepting. Each connection is served by core.serve: a task running
-- handler(conn, host, port) that closes conn when it ends, however it
-- ends, and is listed by core.handlers() until then.
local servers = setmetatable({}, { __mode = "k" })
local serve, handlers = core.serve, core.handlers

local function accept_loop(server, handler)
  servers[server] = true
  while true do
    local conn, host, port = server:accept()
    if conn then
      serve(handler, conn, host, port)
    elseif port == "EBADF" then
      return -- the listening socket was closed: stop serving
    else
      sleep(0.05) -- EMFILE and the like: back off, then keep serving
    end
  end
end

--- Seconds sr.shutdown (and, in the binary, SIGINT, SIGTERM and sr.stop)
-- gives running connection handlers to finish.
M.grace = 5

local shutting_down = false

--- sr.shutdown([grace]): stop accepting on every server made by sr.listen,
-- let their connection handlers finish for up to grace seconds (default
-- sr.grace), cancel those still running, then sr.stop(). Returns true at
-- once; a second call while one is under way stops at once.
function M.shutdown(grace)
  grace = grace == nil and M.grace or grace
  if type(grace) ~= "number" or grace < 0 then
    argerror(1, "shutdown", "grace must be a number >= 0")
  end
  if shutting_down then return core.stop() end
  shutting_down = true
  for server in pairs(servers) do server:close() end
  -- every handler not ended, the one calling this too: it is joined from
  -- the task below, and its connection (closed as it returns) is then
  -- waited for like the others
  local running = handlers()
  spawn(function()
    local deadline = core.now() + grace
    for _, t in ipairs(running) do
      local left = deadline - core.now()
      if left > 0 then t:join(left) end
      if t:status() == "waiting" then t:cancel() end
    end
    -- what closed connections still have queued goes out within the grace
    -- too: in the binary the process exits next, which would drop it
    while select(3, core.counts()) > 0 and core.now() < deadline do
      sleep(math.min(deadline - core.now(), 0.01))
    end
    shutting_down = false
    core.stop()
  end)
  return true
end

--- sr.stop(): make sr.run return. In the sockrun binary it begins a clean
-- exit instead: sr.shutdown(grace).
function M.stop(grace)
  if M._binary then return M.shutdown(grace) end
  return core.stop()
end

--- sr.listen(host, port, handler [, opts]) / sr.listen(path, handler [,
-- opts]): bind, listen, and serve each connection in its own task with
-- handler(conn, peer_host, peer_port). opts: backlog, reuseport, ipv6only.
-- Returns the listening socket; close it to stop serving.
function M.listen(host, port, handler, opts)
  local s, ok, err, code
  if not is_port(port) then -- unix path
    host, handler, opts = host, port, handler
    check_path(host, 1, "listen")
    if type(handler) ~= "function" then
      argerror(2, "listen", "function expected, got " .. type(handler))
    end
    opts = check_opts(opts, 3, "listen")
    s, err, code = socket("unix", "stream")
    if not s then return nil, err, code end
    ok, err, code = raw_bind(s, host)
    -- a socket file left by a server that is gone: take its place
    if code == "EADDRINUSE" and core.unlink_stale(host) then
      ok, err, code = raw_bind(s, host)
    end
  else
    local kind = check_host(host, 1, "listen")
    port = check_port(port, 2, "listen")
    if type(handler) ~= "function" then
      argerror(3, "listen", "function expected, got " .. type(handler))
    end
    opts = check_opts(opts, 4, "listen")
    local list
    list, err, code = addresses(host, kind, opts.timeout)
    if not list then return nil, err, code end
    local a = list[1]
    s, err, code = socket(a.family, "stream")
    if not s then return nil, err, code end
    s:setsockopt("reuseaddr", true)
    -- under `sockrun -w N` the workers share the port
    if opts.reuseport or (M.workers or 0) > 1 then
      s:setsockopt("reuseport", true)
    end
    if opts.ipv6only ~= nil and a.family == "inet6" then
      s:setsockopt("ipv6only", not not opts.ipv6only)
    end
    ok, err, code = raw_bind(s, a.addr, port)
  end
  if ok then ok, err, code = s:listen(opts.backlog) end
  if not ok then
    s:close()
    return nil, err, code
  end
  spawn(accept_loop, s, handler)
  return s
end

--- sr.udp([host, port]): a datagram socket, bound when host and port are
-- given (an unbound one is IPv4).
function M.udp(host, port)
  if host == nil then return socket("inet", "dgram") end
  local kind = check_host(host, 1, "udp")
  port = check_port(port, 2, "udp")
  local list, err, code = addresses(host, kind)
  if not list then return nil, err, code end
  local s
  s, err, code = socket(list[1].family, "dgram")
  if not s then return nil, err, code end
  local ok
  ok, err, code = raw_bind(s, list[1].addr, port)
  if not ok then
    s:close()
    return nil, err, code
  end
  return s
end

-- Called by the sockrun binary before it runs the script: sr.stop() means
-- a clean exit, and SIGINT/SIGTERM begin one (a second signal during the
-- grace period stops at once). A script's own sr.signal replaces these.
-- worker, workers: this process's number and the count under -w N.
function M._runner_setup(worker, workers)
  M._binary = true
  if workers and workers > 0 then
    --- With `sockrun -w N`: this worker's number (1..N) and N.
    M.worker, M.workers = worker, workers
  end
  local function on_signal() M.shutdown() end
  M.signal("SIGINT", on_signal)
  M.signal("SIGTERM", on_signal)
end

M._core = core
return M
