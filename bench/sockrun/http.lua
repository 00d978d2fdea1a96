-- W1/W2 for sockrun: HTTP/1.1 "Hello, World!" with keep-alive, written as a
-- user of the public API would: one task per connection, a plain loop that
-- reads the request head line by line up to the blank line and answers it.
-- After a request that says "Connection: close" it answers and closes.
--   sockrun bench/sockrun/http.lua PORT
io.stdout:setvbuf("line")
local sr = require "sockrun"

local port = math.tointeger(tonumber(arg[1]))
assert(port, "usage: http.lua PORT")

local HEAD = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
local KEEP = HEAD .. "\r\nHello, World!"
local CLOSE = HEAD .. "Connection: close\r\n\r\nHello, World!"

local server = assert(sr.listen("127.0.0.1", port, function(conn)
  conn:setsockopt("nodelay", true)
  while true do
    local line = conn:read("l")            -- the request line
    if not line then return end            -- the client went away
    local close = false
    line = conn:read("l")
    while line ~= "" do                    -- headers, up to the blank line
      if not line then return end
      if line:find("^[Cc]onnection:%s*[Cc]lose") then close = true end
      line = conn:read("l")
    end
    if not conn:write(close and CLOSE or KEEP) or close then return end
  end
end))

print("sockrun http listening on 127.0.0.1:" .. select(2, server:getsockname()))
