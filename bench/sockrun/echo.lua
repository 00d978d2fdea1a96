-- W3/W5 for sockrun: TCP echo, one task per connection blocked in read.
--   sockrun bench/sockrun/echo.lua PORT
io.stdout:setvbuf("line")
local sr = require "sockrun"

local port = math.tointeger(tonumber(arg[1]))
assert(port, "usage: echo.lua PORT")

local server = assert(sr.listen("127.0.0.1", port, function(conn)
  conn:setsockopt("nodelay", true)
  while true do
    local data = conn:read()               -- whatever arrived, >= 1 byte
    if not data or not conn:write(data) then return end
  end
end))

print("sockrun echo listening on 127.0.0.1:" .. select(2, server:getsockname()))
