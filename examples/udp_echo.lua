-- UDP echo server: every datagram is sent straight back to its sender.
-- Try: sockrun examples/udp_echo.lua [HOST] [PORT]   (default 127.0.0.1 7002),
--      then: nc -u 127.0.0.1 7002   (each line you type is one datagram)
io.stdout:setvbuf("line")
local sr = require "sockrun"

local host = arg[1] or "127.0.0.1"
local port = math.tointeger(tonumber(arg[2] or 7002))
if not port then
  io.stderr:write("usage: udp_echo.lua [HOST] [PORT]\n")
  os.exit(2)
end

local sock, err = sr.udp(host, port)  -- a datagram socket bound to host:port
if not sock then
  io.stderr:write(("udp echo: cannot bind %s:%d: %s\n"):format(host, port, err))
  os.exit(1)
end

host, port = sock:getsockname()
local shown = host:find(":", 1, true) and "[" .. host .. "]" or host
print(("udp echo listening on %s:%d -- try: nc -u %s %d"):format(shown, port, host, port))

-- The main chunk is a task too: this loop waits for datagrams without
-- blocking anything else. There are no connections: each datagram comes with
-- its sender's address, and the reply goes back there.
while true do
  local data, peer_host, peer_port = sock:recvfrom()
  if not data then  -- on failure recvfrom returns nil, message, code
    io.stderr:write("udp echo: " .. tostring(peer_host) .. "\n")
    sock:close()
    os.exit(1)
  end
  sock:sendto(data, peer_host, peer_port)
end
