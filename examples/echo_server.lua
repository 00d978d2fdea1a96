-- TCP echo server: every byte a client sends comes straight back to it.
-- Try: sockrun examples/echo_server.lua [HOST] [PORT]   (default 127.0.0.1 7000;
--      port 0 picks a free port), then in another terminal: nc 127.0.0.1 7000
io.stdout:setvbuf("line")
local sr = require "sockrun"

local host = arg[1] or "127.0.0.1"
local port = math.tointeger(tonumber(arg[2] or 7000))
if not port then
  io.stderr:write("usage: echo_server.lua [HOST] [PORT]\n")
  os.exit(2)
end

-- sr.listen runs the handler in its own task for each connection and closes
-- the connection when the handler returns, so the handler is a plain loop.
local server, err = sr.listen(host, port, function(conn, peer_host, peer_port)
  print(("connection from %s:%d"):format(peer_host, peer_port))
  while true do
    local data = conn:read()  -- whatever has arrived (at least one byte)
    if not data then break end  -- end of file or error: the client is gone
    if not conn:write(data) then break end
  end
  print(("%s:%d disconnected"):format(peer_host, peer_port))
end)
if not server then
  io.stderr:write(("echo server: cannot listen on %s:%d: %s\n"):format(host, port, err))
  os.exit(1)
end

-- With port 0 the system picked the port: ask the socket which one.
host, port = server:getsockname()
local shown = host:find(":", 1, true) and "[" .. host .. "]" or host
print(("echo server listening on %s:%d -- try: nc %s %d"):format(shown, port, host, port))
