--- sockrun: a Lua-scriptable socket runtime over libuv.
-- The C core (`sockrun.core`) holds sockets, tasks and the loop; this
-- module adds what reads better in Lua: host names resolved before
-- bind/connect/sendto, and the one-call helpers sr.connect, sr.listen,
-- sr.udp and s:lines.
-- @module sockrun

local core = require "sockrun.core"

local error, type, ipairs, pairs = error, type, ipairs, pairs
local math_type, string_format = math.type, string.format

local M = {}
for k, v in pairs(core) do
  if k ~= "methods" and k ~= "counts" then M[k] = v end
end

local methods = core.methods
local socket, spawn, resolve, sleep = core.socket, core.spawn, core.resolve,
    core.sleep
local raw_bind, raw_connect, raw_sendto = methods.bind, methods.connect,
    methods.sendto

-- Misuse raises, worded as luaL_argerror words it.
local function argerror(n, fname, msg)
  error(string_format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
end

local function check_host(host, n, fname)
  if type(host) ~= "string" then
    argerror(n, fname, "string expected, got " .. type(host))
  end
  if not host:match("^[%w%.%-_:%%%*]*$") then
    argerror(n, fname, "malformed address")
  end
end

local function check_port(port, n, fname)
  if math_type(port) ~= "integer" then
    argerror(n, fname, "port must be an integer, got " .. type(port))
  end
  if port < 0 or port > 65535 then argerror(n, fname, "port out of range") end
end

local function check_opts(opts, n, fname)
  if opts ~= nil and type(opts) ~= "table" then
    argerror(n, fname, "table expected, got " .. type(opts))
  end
  return opts or {}
end

-- "inet"/"inet6" for a numeric host or the any-address, nil for a name.
local function numeric_family(host)
  if host == "*" or host == "" then return "inet" end
  if host:find(":", 1, true) then return "inet6" end
  if host:match("^%d+%.%d+%.%d+%.%d+$") then return "inet" end
  return nil
end

-- A numeric address of the given family for host, resolving a name.
local function address_for(host, family, timeout)
  if host == "*" or host == "" or numeric_family(host) then return host end
  local list, err, code = resolve(host, family, timeout)
  if not list then return nil, err, code end
  if not list[1] then
    return nil, "no " .. family .. " address for " .. host, "EAI_ADDRFAMILY"
  end
  return list[1].addr
end

-- Addresses to try for host, in the resolver's order.
local function addresses(host, timeout)
  local fam = numeric_family(host)
  if fam then return { { family = fam, addr = host } } end
  return resolve(host, "any", timeout)
end

--- s:bind(host, port) / s:bind(path). "*" is the any-address.
function methods:bind(host, port)
  local family = self:family()
  if family == nil or family == "unix" then return raw_bind(self, host) end
  check_host(host, 1, "bind")
  check_port(port, 2, "bind")
  local addr, err, code = address_for(host, family, (self:gettimeouts()))
  if not addr then return nil, err, code end
  return raw_bind(self, addr, port)
end

--- s:connect(host, port) / s:connect(path); names are resolved within the
-- connect timeout.
function methods:connect(host, port)
  local family = self:family()
  if family == nil or family == "unix" then return raw_connect(self, host) end
  check_host(host, 1, "connect")
  check_port(port, 2, "connect")
  local addr, err, code = address_for(host, family, (self:gettimeouts()))
  if not addr then return nil, err, code end
  return raw_connect(self, addr, port)
end

--- s:sendto(data, host, port) / s:sendto(data, path) / s:sendto(data).
function methods:sendto(data, host, port)
  local family = self:family()
  if family == nil or family == "unix" or host == nil then
    return raw_sendto(self, data, host)
  end
  check_host(host, 2, "sendto")
  check_port(port, 3, "sendto")
  local _, _, wt = self:gettimeouts()
  local addr, err, code = address_for(host, family, wt)
  if not addr then return nil, err, code end
  return raw_sendto(self, data, addr, port)
end

--- Iterator over s:read(fmt or "l") until end of file or an error.
function methods:lines(fmt)
  fmt = fmt or "l"
  return function() return (self:read(fmt)) end
end

--- sr.connect(host, port [, opts]) / sr.connect(path [, opts]): a
-- connected stream socket, trying each address of a name in turn.
-- opts.timeout bounds resolution and each connect.
function M.connect(host, port, opts)
  local timeout
  if type(port) ~= "number" then -- unix path
    if type(host) ~= "string" then
      argerror(1, "connect", "string expected, got " .. type(host))
    end
    timeout = check_opts(port, 2, "connect").timeout
    local s, err, code = socket("unix", "stream")
    if not s then return nil, err, code end
    s:settimeout(timeout)
    local ok
    ok, err, code = raw_connect(s, host)
    if not ok then s:close(); return nil, err, code end
    return s
  end
  check_host(host, 1, "connect")
  check_port(port, 2, "connect")
  timeout = check_opts(opts, 3, "connect").timeout
  local list, err, code = addresses(host, timeout)
  if not list then return nil, err, code end
  for _, a in ipairs(list) do
    local s
    s, err, code = socket(a.family, "stream")
    if s then
      s:settimeout(timeout)
      local ok
      ok, err, code = raw_connect(s, a.addr, port)
      if ok then
        s:settimeout(nil)
        return s
      end
      s:close()
    end
  end
  return nil, err or "no address to connect to", code or "EAI_NONAME"
end

-- One connection: the handler's task owns it and closes it on the way out,
-- whether the handler returns or fails.
local function serve(handler, conn, host, port)
  local c <close> = conn
  handler(c, host, port)
end

local function accept_loop(server, handler)
  while true do
    local conn, host, port = server:accept()
    if conn then
      spawn(serve, handler, conn, host, port)
    elseif port == "EBADF" then
      return -- the listening socket was closed: stop serving
    else
      sleep(0.05) -- EMFILE and the like: back off, then keep serving
    end
  end
end

--- sr.listen(host, port, handler [, opts]) / sr.listen(path, handler [,
-- opts]): bind, listen, and serve each connection in its own task with
-- handler(conn, peer_host, peer_port). opts: backlog, reuseport, ipv6only.
-- Returns the listening socket; close it to stop serving.
function M.listen(host, port, handler, opts)
  local s, ok, err, code
  if type(port) ~= "number" then -- unix path
    host, handler, opts = host, port, handler
    if type(host) ~= "string" then
      argerror(1, "listen", "string expected, got " .. type(host))
    end
    if type(handler) ~= "function" then
      argerror(2, "listen", "function expected, got " .. type(handler))
    end
    opts = check_opts(opts, 3, "listen")
    s, err, code = socket("unix", "stream")
    if not s then return nil, err, code end
    ok, err, code = raw_bind(s, host)
  else
    check_host(host, 1, "listen")
    check_port(port, 2, "listen")
    if type(handler) ~= "function" then
      argerror(3, "listen", "function expected, got " .. type(handler))
    end
    opts = check_opts(opts, 4, "listen")
    local list
    list, err, code = addresses(host)
    if not list then return nil, err, code end
    local a = list[1]
    if not a then return nil, "no address for " .. host, "EAI_NONAME" end
    s, err, code = socket(a.family, "stream")
    if not s then return nil, err, code end
    s:setsockopt("reuseaddr", true)
    if opts.reuseport then s:setsockopt("reuseport", true) end
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
  check_host(host, 1, "udp")
  check_port(port, 2, "udp")
  local list, err, code = addresses(host)
  if not list then return nil, err, code end
  local a = list[1]
  if not a then return nil, "no address for " .. host, "EAI_NONAME" end
  local s
  s, err, code = socket(a.family, "dgram")
  if not s then return nil, err, code end
  local ok
  ok, err, code = raw_bind(s, a.addr, port)
  if not ok then
    s:close()
    return nil, err, code
  end
  return s
end

M._core = core
return M
