-- Line chat server: each line a client sends goes to every other client,
-- prefixed with the sender's name; joins and leaves are announced.
-- Try: sockrun examples/chat_server.lua [HOST] [PORT]   (default 127.0.0.1 7001),
--      then connect two terminals: nc 127.0.0.1 7001  (type "/nick NAME" to rename)
io.stdout:setvbuf("line")
local sr = require "sockrun"

local host = arg[1] or "127.0.0.1"
local port = math.tointeger(tonumber(arg[2] or 7001))
if not port then
  io.stderr:write("usage: chat_server.lua [HOST] [PORT]\n")
  os.exit(2)
end

-- The connected clients: connection -> name, and how many there are.
local clients, count = {}, 0

-- Send a line to every client but `except`. Writes may wait (a slow reader),
-- and other clients may join or leave meanwhile, so walk a snapshot.
local function broadcast(line, except)
  local targets = {}
  for conn in pairs(clients) do
    if conn ~= except then targets[#targets + 1] = conn end
  end
  for _, conn in ipairs(targets) do
    conn:write(line, "\n")  -- a failed write is fine: that client's own task will see it leave
  end
end

local server, err = sr.listen(host, port, function(conn, peer_host, peer_port)
  local name = peer_host .. ":" .. peer_port
  clients[conn], count = name, count + 1
  print(name .. " joined")
  conn:write("* welcome, you are ", name, " (", count, " here)\n")
  broadcast("* " .. name .. " joined", conn)

  for line in conn:lines() do  -- "l" strips "\n" and "\r\n"
    local nick = line:match("^/nick%s+(%S+)")
    if nick then
      broadcast("* " .. name .. " is now " .. nick, conn)
      name = nick
      clients[conn] = name
      conn:write("* you are now ", name, "\n")
    elseif line ~= "" then
      broadcast(name .. ": " .. line, conn)
    end
  end

  -- End of file or an error: the client has gone. sr.listen closes conn.
  clients[conn], count = nil, count - 1
  print(name .. " left")
  broadcast("* " .. name .. " left")
end)
if not server then
  io.stderr:write(("chat server: cannot listen on %s:%d: %s\n"):format(host, port, err))
  os.exit(1)
end

host, port = server:getsockname()
local shown = host:find(":", 1, true) and "[" .. host .. "]" or host
print(("chat server listening on %s:%d -- try: nc %s %d"):format(shown, port, host, port))
