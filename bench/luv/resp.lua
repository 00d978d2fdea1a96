-- W4 for luv (callback style): a RESP server for PING, SET and GET, inline
-- and multibulk commands. Each chunk is appended to the connection's
-- buffer; every complete command in it is executed, and the replies to one
-- chunk go out in one write (a table of strings: one writev), so a pipelined
-- batch (redis-benchmark -P 16) costs one read and one write.
--   lua5.4 bench/luv/resp.lua PORT
io.stdout:setvbuf("line")
local uv = require "luv"

local port = math.tointeger(tonumber(arg[1]))
assert(port, "usage: resp.lua PORT")

local store = {}

-- Parse one command at buf[pos..]: argv and the position after it; nil when
-- the command is not complete yet; false on a protocol error.
local function parse(buf, pos)
  if buf:byte(pos) ~= 42 then              -- not '*': an inline command
    local nl = buf:find("\n", pos, true)
    if not nl then return nil end
    local argv = {}
    for word in buf:sub(pos, nl - 1):gmatch("[^%s]+") do argv[#argv + 1] = word end
    return argv, nl + 1
  end
  local cr = buf:find("\r\n", pos, true)
  if not cr then return nil end
  local n = tonumber(buf:sub(pos + 1, cr - 1))
  if not n then return false end
  pos = cr + 2
  local argv = {}
  for i = 1, n do
    cr = buf:find("\r\n", pos, true)
    if not cr then return nil end
    if buf:byte(pos) ~= 36 then return false end   -- '$'
    local len = tonumber(buf:sub(pos + 1, cr - 1))
    if not len then return false end
    local s = cr + 2
    if #buf < s + len + 1 then return nil end
    argv[i] = buf:sub(s, s + len - 1)
    pos = s + len + 2
  end
  return argv, pos
end

local function bulk(s)
  if s == nil then return "$-1\r\n" end
  return "$" .. #s .. "\r\n" .. s .. "\r\n"
end

local function execute(argv)
  local cmd = (argv[1] or ""):upper()
  if cmd == "PING" then
    return argv[2] and bulk(argv[2]) or "+PONG\r\n"
  elseif cmd == "SET" and #argv >= 3 then
    store[argv[2]] = argv[3]
    return "+OK\r\n"
  elseif cmd == "GET" and #argv == 2 then
    return bulk(store[argv[2]])
  end
  return "-ERR unknown command\r\n"
end

-- A client that goes away with replies in flight must not kill the server:
-- take SIGPIPE with a handler that does nothing (and keeps no loop alive).
local sigpipe = uv.new_signal()
sigpipe:start("sigpipe", function() end)
sigpipe:unref()

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", port))
assert(server:listen(4096, function(err)
  if err then return end
  local client = uv.new_tcp()
  if not server:accept(client) then client:close() return end
  client:nodelay(true)
  local buf = ""
  client:read_start(function(rerr, chunk)
    if rerr or not chunk then
      client:close()
      return
    end
    buf = buf .. chunk
    local pos, out = 1, {}
    while pos <= #buf do
      local argv, nextpos = parse(buf, pos)
      if argv == false then
        out[#out + 1] = "-ERR protocol error\r\n"
        client:read_stop()
        client:write(out, function() client:close() end)
        return
      end
      if not argv then break end
      pos = nextpos
      if #argv > 0 then out[#out + 1] = execute(argv) end
    end
    if #out > 0 then client:write(out) end
    buf = buf:sub(pos)
  end)
end))

print("luv resp listening on 127.0.0.1:" .. port)
uv.run()
