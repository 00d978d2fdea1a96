-- W4 for sockrun: a RESP (Redis protocol) server for PING, SET and GET,
-- inline ("PING\r\n") and multibulk ("*1\r\n$4\r\nPING\r\n") commands, as
-- redis-benchmark sends them. One task per connection reads one command at
-- a time and writes its reply; pipelined commands (redis-benchmark -P 16)
-- are simply the next reads.
--   sockrun bench/sockrun/resp.lua PORT
io.stdout:setvbuf("line")
local sr = require "sockrun"

local port = math.tointeger(tonumber(arg[1]))
assert(port, "usage: resp.lua PORT")

local store = {}
local MAX_BULK = 512 * 1024 * 1024         -- as redis-server's default limit

-- One command as a list of strings; nil when the client went away or
-- broke the protocol. Reads take several formats at once, as Lua's
-- file:read does, and "n" reads a number: "$3\r\n" is read(1, "n", "l").
local function read_command(conn)
  local first = conn:read(1)
  if first ~= "*" then                          -- an inline command
    local line = first and conn:read("l")
    if not line then return nil end
    local argv = {}
    for word in (first .. line):gmatch("%S+") do argv[#argv + 1] = word end
    return argv
  end
  local n, rest = conn:read("n", "l")           -- "<count>\r\n"
  if rest ~= "" then return nil end
  local argv = {}
  for i = 1, n do
    local dollar, len, eol = conn:read(1, "n", "l")   -- "$<length>\r\n"
    -- (a failed "n" leaves its message in eol)
    if dollar ~= "$" or eol ~= "" or len % 1 ~= 0 or len < 0 or len > MAX_BULK then
      return nil
    end
    local arg, crlf = conn:read(len, "l")           -- "<bytes>\r\n"
    if crlf ~= "" then return nil end
    argv[i] = arg
  end
  return argv
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

local server = assert(sr.listen("127.0.0.1", port, function(conn)
  conn:setsockopt("nodelay", true)
  while true do
    local argv = read_command(conn)
    if not argv then return end
    if #argv > 0 and not conn:write(execute(argv)) then return end
  end
end))

print("sockrun resp listening on 127.0.0.1:" .. select(2, server:getsockname()))
