-- TCP proxy: forwards each connection on a local port to another address,
-- copying bytes both ways and passing half-closes on.
-- Try: sockrun examples/tcp_proxy.lua LISTEN_PORT TARGET_HOST TARGET_PORT [LISTEN_HOST]
--      e.g. 8000 127.0.0.1 7000 in front of echo_server.lua, then: nc 127.0.0.1 8000
io.stdout:setvbuf("line")
local sr = require "sockrun"

local listen_port = math.tointeger(tonumber(arg[1] or 8000))
local target_host = arg[2] or "127.0.0.1"
local target_port = math.tointeger(tonumber(arg[3] or 7000))
local listen_host = arg[4] or "127.0.0.1"
if not listen_port or not target_port then
  io.stderr:write("usage: tcp_proxy.lua LISTEN_PORT TARGET_HOST TARGET_PORT [LISTEN_HOST]\n")
  os.exit(2)
end

-- Copy from `src` to `dst` until `src` ends. At a clean end of file, pass the
-- half-close on (dst:shutdown() sends our FIN once queued data is out) and let
-- the other direction carry on. On an error (reset, timeout, failed write)
-- close both sockets: that also wakes the other pump, which then stops.
local function pump(src, dst)
  while true do
    local data, _, code = src:read()
    if not data then
      if code == "EOF" then
        dst:shutdown()
      else
        src:close()
        dst:close()
      end
      return
    end
    if not dst:write(data) then
      src:close()
      dst:close()
      return
    end
  end
end

local server, err = sr.listen(listen_host, listen_port, function(client, peer_host, peer_port)
  local upstream, cerr = sr.connect(target_host, target_port, { timeout = 10 })
  if not upstream then
    print(("%s:%d: cannot reach %s:%d: %s"):format(peer_host, peer_port,
      target_host, target_port, cerr))
    return  -- sr.listen closes client
  end
  local up <close> = upstream  -- closed however this handler ends

  -- One task per direction; wait for both before the handler returns,
  -- because returning closes the client connection.
  local a = sr.spawn(pump, client, upstream)
  local b = sr.spawn(pump, upstream, client)
  a:join()
  b:join()
end)
if not server then
  io.stderr:write(("tcp proxy: cannot listen on %s:%d: %s\n"):format(listen_host, listen_port, err))
  os.exit(1)
end

local host, port = server:getsockname()
local shown = host:find(":", 1, true) and "[" .. host .. "]" or host
print(("tcp proxy listening on %s:%d, forwarding to %s:%d"):format(shown, port, target_host, target_port))
