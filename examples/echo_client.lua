-- TCP echo client: sends each message, one per line, and prints each reply.
-- Try: sockrun examples/echo_client.lua 127.0.0.1 7000 hello world
--   or: printf 'one\ntwo\n' | sockrun examples/echo_client.lua 127.0.0.1 7000
-- (with examples/echo_server.lua running).
io.stdout:setvbuf("line")
local sr = require "sockrun"

local host = arg[1] or "127.0.0.1"
local port = math.tointeger(tonumber(arg[2] or 7000))
if not port then
  io.stderr:write("usage: echo_client.lua [HOST] [PORT] [MESSAGE...]\n")
  os.exit(2)
end

local conn, err = sr.connect(host, port, { timeout = 5 })
if not conn then
  io.stderr:write(("echo client: cannot connect to %s:%d: %s\n"):format(host, port, err))
  os.exit(1)
end
conn:settimeout(5)  -- do not wait forever for a reply

-- One message: send it as a line, then read the echoed line back.
local function exchange(msg)
  local ok, werr = conn:write(msg, "\n")
  if not ok then return nil, werr end
  return conn:read("l")
end

-- The messages: the remaining arguments, or else the lines of stdin.
-- (io.read blocks the whole process, which is fine for a client that has
-- nothing else to do.)
local messages
if arg[3] then
  local i = 2
  messages = function() i = i + 1; return arg[i] end
else
  messages = io.lines()
end

local status = 0
for msg in messages do
  local reply, rerr = exchange(msg)
  if not reply then
    io.stderr:write("echo client: " .. tostring(rerr) .. "\n")
    status = 1
    break
  end
  print(reply)
end
conn:close()
os.exit(status)
