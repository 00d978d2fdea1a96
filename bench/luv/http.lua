-- W1/W2 for luv (callback style): HTTP/1.1 "Hello, World!" with keep-alive.
-- Each chunk read is appended to the connection's buffer; every complete
-- request head (up to the blank line) gets its answer, the answers to one
-- chunk in one write; after a request that says "Connection: close" the
-- answer is followed by a close.
--   lua5.4 bench/luv/http.lua PORT
io.stdout:setvbuf("line")
local uv = require "luv"

local port = math.tointeger(tonumber(arg[1]))
assert(port, "usage: http.lua PORT")

local HEAD = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
local KEEP = HEAD .. "\r\nHello, World!"
local CLOSE = HEAD .. "Connection: close\r\n\r\nHello, World!"

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
    while true do
      local s, e = buf:find("\r\n\r\n", pos, true)
      if not s then break end
      local head = buf:sub(pos, s + 1)
      pos = e + 1
      if head:find("\n[Cc]onnection:%s*[Cc]lose") then
        out[#out + 1] = CLOSE
        client:read_stop()
        client:write(out, function() client:close() end)
        return
      end
      out[#out + 1] = KEEP
    end
    if #out > 0 then client:write(out) end
    buf = buf:sub(pos)
  end)
end))

print("luv http listening on 127.0.0.1:" .. port)
uv.run()
