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

-- The connected clients: connection -> client ({conn, name, queue}), and
-- how many there are.
local clients, count = {}, 0

-- A client that has this many lines waiting has stopped reading: dropped.
local MAX_QUEUED = 1000

-- Queue a line for a client. Each client's lines go out from a writer task
-- of its own, started when its queue fills and ended when it is empty, so a
-- client that reads slowly holds up only itself, and only one task ever
-- writes to a connection.
local function send(client, ...)
  local q = client.queue
  if #q >= MAX_QUEUED then
    client.conn:close() -- its handler sees the close and says it left
    return
  end
  q[#q + 1] = table.concat({ ... })
  if client.writing then return end
  client.writing = true
  sr.spawn(function()
    while q[1] do
      if not client.conn:write(table.remove(q, 1), "\n") then
        for i = #q, 1, -1 do q[i] = nil end -- gone: its handler cleans up
      end
    end
    client.writing = false
  end)
end

-- Send a line to every client but `except`.
local function broadcast(line, except)
  for conn, client in pairs(clients) do
    if conn ~= except then send(client, line) end
  end
end

local server, err = sr.listen(host, port, function(conn, peer_host, peer_port)
  local me = { conn = conn, name = peer_host .. ":" .. peer_port, queue = {} }
  clients[conn], count = me, count + 1
  print(me.name .. " joined")
  send(me, "* welcome, you are ", me.name, " (", count, " here)")
  broadcast("* " .. me.name .. " joined", conn)

  for line in conn:lines() do  -- "l" strips "\n" and "\r\n"
    local nick = line:match("^/nick%s+(%S+)")
    if nick then
      broadcast("* " .. me.name .. " is now " .. nick, conn)
      me.name = nick
      send(me, "* you are now ", me.name)
    elseif line ~= "" then
      broadcast(me.name .. ": " .. line, conn)
    end
  end

  -- End of file, an error, or dropped: the client has gone. sr.listen
  -- closes conn.
  clients[conn], count = nil, count - 1
  print(me.name .. " left")
  broadcast("* " .. me.name .. " left")
end)
if not server then
  io.stderr:write(("chat server: cannot listen on %s:%d: %s\n"):format(host, port, err))
  os.exit(1)
end

host, port = server:getsockname()
local shown = host:find(":", 1, true) and "[" .. host .. "]" or host
print(("chat server listening on %s:%d -- try: nc %s %d"):format(shown, port, host, port))
