-- W3/W5 for luv (callback style): TCP echo.
--   lua5.4 bench/luv/echo.lua PORT
io.stdout:setvbuf("line")
local uv = require "luv"

local port = math.tointeger(tonumber(arg[1]))
assert(port, "usage: echo.lua PORT")

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
  client:read_start(function(rerr, chunk)
    if rerr or not chunk then
      client:close()
      return
    end
    client:write(chunk)
  end)
end))

print("luv echo listening on 127.0.0.1:" .. port)
uv.run()
